"""`tiering`: one CLI for data scientists and ops. Each sub-command's help is its documentation.

Heavy imports (LightGBM, MLflow, BentoML) happen inside the commands so that `--help` is instant.
"""

from __future__ import annotations

import logging
import os

import typer

from tiering_cli import (
    backtest_cmd,
    bento_cmd,
    data_cmd,
    demo_cmd,
    history_cmd,
    icp_cmd,
    model_cmd,
    override_cmd,
    report_cmd,
    score_cmd,
)

app = typer.Typer(
    help="Account tiering: learn from won/lost deals, tier every target account, explain why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflows the commands' docstrings into paragraphs
)


@app.callback()
def _quiet_libraries() -> None:
    """The CLI prints its own progress and results; the libraries' chatter stays out of it."""
    # MLflow configures its own loggers when imported (later, inside the commands).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)


app.command("demo-data")(data_cmd.demo_data)
app.command("validate")(data_cmd.validate)
app.add_typer(icp_cmd.app, name="icp")
app.command("train")(model_cmd.train)
app.command("models")(model_cmd.models)
app.command("promote")(model_cmd.promote)
app.command("rollback")(model_cmd.rollback)
app.command("score")(score_cmd.score)
app.command("backtest")(backtest_cmd.backtest)
app.command("serve")(score_cmd.serve)
app.command("build")(bento_cmd.build)
app.command("demo")(demo_cmd.demo)
app.command("explain")(history_cmd.explain)
app.add_typer(report_cmd.app, name="report")
app.add_typer(override_cmd.app, name="override")

if __name__ == "__main__":
    app()
