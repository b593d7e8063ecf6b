"""`tiering demo`: the main job end to end on the embedded demo data.

Generate the demo CRM (when absent), validate it, train and register the models, tier every
account, then show the tier summary and the top Tier 1 accounts with their reasons. Each step
is the same code as its own sub-command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel

from tiering_cli import data_cmd, model_cmd, score_cmd
from tiering_cli.common import CONFIG_OPTION, console, fail, read_config


def demo(
    config: Path = CONFIG_OPTION,
    accounts: Annotated[
        int, typer.Option("--accounts", "-n", min=100, help="Demo accounts to generate.")
    ] = 5000,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Seed of the demo data.")] = 7,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Regenerate the demo data even if it exists.")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the tiered account list is written.")
    ] = Path("outputs/tiers.parquet"),
    top: Annotated[int, typer.Option("--top", help="Tier 1 accounts to show with reasons.")] = 5,
) -> None:
    """Run the whole job on the demo CRM: data, validate, train + register, score, show tiers."""
    if out.suffix != ".parquet":
        raise fail(f"--out must be a .parquet file, not {out.name}")
    settings = read_config(config)
    accounts_source = settings.data.accounts
    if accounts_source is None:
        raise fail(f"{config}: the demo writes [data.accounts] and [data.opportunities] files")
    data_dir = accounts_source.path.parent
    _rule("1/4 Demo CRM")
    missing = [s.path.name for s in settings.data.sources().values() if not s.path.exists()]
    if fresh or missing:
        if missing and accounts_source.path.exists():
            console.print(
                f"the demo data in {data_dir} lacks {', '.join(missing)}: regenerating it"
            )
        data_cmd.demo_data(accounts=accounts, seed=seed, out=data_dir)
    else:
        console.print(f"using the demo data in {data_dir} (--fresh regenerates it)")
    _rule("2/4 Data contract")
    data_cmd.validate(config=config)
    _rule("3/4 Train, evaluate, register")
    model_cmd.train(config=config, cluster=None)
    _rule("4/4 Tier every account")
    score_cmd.score(
        config=config,
        as_of=None,
        out=out,
        model="champion",
        snapshot=None,
        crm=None,
        crm_encoding=None,
        cluster=None,
    )
    show_top_accounts(out, top)


def show_top_accounts(scores_path: Path, top: int) -> None:
    """The highest-priority Tier 1 accounts, each with the reasons a rep reads."""
    import json

    import pandas as pd

    scores = pd.read_parquet(scores_path)
    tier1 = scores[scores["tier"] == 1].sort_values("priority", ascending=False).head(top)
    for row in tier1.to_dict("records"):
        lines = [
            f"likely to buy within the horizon: {row['p_convert']:.0%}; if it buys: "
            f"${row['revenue_p10']:,.0f}-${row['revenue_p90']:,.0f}; expected revenue "
            f"${row['expected_revenue']:,.0f}; ICP fit {row['icp_fit']:.0f}",
            f"[bold]Why this tier:[/] {row['tier_rule_text']}",
        ]
        lines[:0] = [str(h) for h in row["headline"]]
        lines += [f"  • {reason['text']}" for reason in json.loads(str(row["reasons"]))]
        met, missed = list(row["icp_met"]), list(row["icp_missed"])
        if met:
            lines.append(f"[green]ICP met:[/] {'; '.join(met)}")
        if missed:
            lines.append(f"[yellow]ICP missed:[/] {'; '.join(missed)}")
        lines.append(f"[bold]Playbook:[/] {', '.join(row['playbook'])}")
        console.print(Panel("\n".join(lines), title=f"Tier 1 · {row['account_id']}", expand=False))


def _rule(title: str) -> None:
    console.rule(f"[bold]{title}")
