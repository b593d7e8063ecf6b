"""What every command shares: the console, config loading and turning known errors into a
clear message and a non-zero exit (never a traceback for bad input)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from tiering.config import Config, ConfigError, load_config


def _width() -> int | None:
    """Piped output (CI logs, files, captured by tests) gets wide lines rather than rich's
    default 80 columns, so tables and messages do not break in the middle of a value."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return None
    return 160


console = Console(stderr=False, highlight=False, width=_width())
err_console = Console(stderr=True, highlight=False, width=_width())

CONFIG_OPTION = typer.Option(
    Path("configs/demo.toml"), "--config", "-c", help="TOML config of the deployment.", exists=False
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print the error (after closing a running progress bar, so that the message is a line of
    its own below it) and return the exit to raise."""
    if _Bar.running is not None:
        _Bar.running.stop()
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def read_config(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


@contextmanager
def known_errors() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 2 instead of a traceback."""
    from features.contract import DataContractError
    from tiering.cluster import ClusterError

    try:
        yield
    except (DataContractError, ConfigError, ClusterError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None


class _Bar(Progress):
    """The command's progress display; ``fail`` closes the one running."""

    running: _Bar | None = None

    def start(self) -> None:
        _Bar.running = self
        super().start()

    def stop(self) -> None:
        super().stop()
        if _Bar.running is self:
            _Bar.running = None


def progress() -> Progress:
    return _Bar(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
