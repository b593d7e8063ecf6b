"""Risk: a notebook in notebooks/ no longer runs against the current code. The exploration
notebook makes its own demo data in a temporary folder; the model report and the tier review
read the champion of a project's store, so they run in the README sequence
(tests/test_readme_sequence.py), against the store it built."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import NOTEBOOKS_DIR, execute_notebook

STANDALONE = [NOTEBOOKS_DIR / "01_explore.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", STANDALONE, ids=[p.stem for p in STANDALONE])
def test_notebook_runs_headless(notebook: Path, tmp_path: Path) -> None:
    before = {p.name for p in notebook.parent.iterdir()}
    outputs = execute_notebook(
        notebook,
        {
            # Headless plots, temporary files under tmp_path rather than the repository.
            "MPLBACKEND": "Agg",
            "TMPDIR": str(tmp_path),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "BENTOML_DO_NOT_TRACK": "true",
        },
    )
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)  # type: ignore[operator]
    assert images > 0, "a notebook without plots: were figures shown?"
    assert {p.name for p in notebook.parent.iterdir()} == before
