"""Risk: a damaged model file reaches LightGBM, which aborts the whole process natively
(serve, score and train die with "terminate called..."), instead of a clear refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiering.bundle import REQUIRED_FILES, Bundle, BundleError

from support import TrainedBundle


@pytest.fixture(scope="module")
def saved(trained_bundle: TrainedBundle) -> Path:
    return trained_bundle.bundle_dir


def _copy(saved: Path, to: Path) -> Path:
    shutil.copytree(saved, to)
    return to


def test_bundle_json_records_a_sha256_of_every_file(saved: Path) -> None:
    import hashlib

    recorded = json.loads((saved / "bundle.json").read_text())["sha256"]
    written = {str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file()}
    assert set(recorded) == written - {"bundle.json"}
    assert set(REQUIRED_FILES) <= set(recorded)
    assert {"models/conversion.txt", "models/revenue.json"} <= set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((saved / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", ["models/conversion.txt", "models/revenue.json", "cutoffs.json"])
def test_a_truncated_file_is_refused_naming_it(saved: Path, tmp_path: Path, name: str) -> None:
    bundle = _copy(saved, tmp_path / "b")
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=f"{name}: sha256 differs"):
        Bundle.load(bundle)


def test_a_missing_file_or_a_garbage_header_is_refused(saved: Path, tmp_path: Path) -> None:
    missing = _copy(saved, tmp_path / "missing")
    (missing / "models" / "conversion.txt").unlink()
    with pytest.raises(BundleError, match="missing: models/conversion.txt"):
        Bundle.load(missing)
    garbage = _copy(saved, tmp_path / "garbage")
    (garbage / "bundle.json").write_bytes(b"\x00\x01not json")
    with pytest.raises(BundleError, match="bundle.json"):
        Bundle.load(garbage)
    unverifiable = _copy(saved, tmp_path / "unverifiable")
    header = json.loads((unverifiable / "bundle.json").read_text())
    del header["sha256"]
    (unverifiable / "bundle.json").write_text(json.dumps(header))
    with pytest.raises(BundleError, match="no sha256"):
        Bundle.load(unverifiable)


def test_an_intact_copy_loads(saved: Path, tmp_path: Path) -> None:
    assert Bundle.load(_copy(saved, tmp_path / "ok")).version == "test-1"
