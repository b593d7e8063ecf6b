"""Fixtures every test file gets."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests read the CLI's output as text: no wrapping inside table cells, whatever terminal
    width the machine's environment declares."""
    from tiering_cli import common

    monkeypatch.setattr(common.console, "width", 250)
    monkeypatch.setattr(common.err_console, "width", 250)
