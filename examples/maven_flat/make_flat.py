"""Build the flat deal report in this folder from the Maven CRM tables in ../maven_crm.

A CRM "deals report" as a user downloads it: one row per deal, the account's fields repeated
on every row, no account id and no deal id, dates written 27-Mar-17 and amounts as "$1,054.00".
Every second deal with an account is kept, so the example stays small. Run it from the
repository root: ``python examples/maven_flat/make_flat.py``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "maven_crm"


def flat_report() -> pd.DataFrame:
    deals = pd.read_csv(SOURCE / "sales_pipeline.csv", dtype=str)
    accounts = pd.read_csv(SOURCE / "accounts.csv", dtype=str)
    teams = pd.read_csv(SOURCE / "sales_teams.csv", dtype=str)
    deals = deals[deals["account"].notna()].iloc[::2]
    flat = deals.merge(accounts, on="account", how="left").merge(
        teams, on="sales_agent", how="left"
    )

    def day(column: str) -> pd.Series:
        dates = pd.to_datetime(flat[column], format="%Y-%m-%d")
        return dates.dt.strftime("%d-%b-%y").where(dates.notna(), "")

    value = pd.to_numeric(flat["close_value"])
    return pd.DataFrame(
        {
            "Account Name": flat["account"],
            "Office Location": flat["office_location"],
            "Sector": flat["sector"],
            "Employees": flat["employees"],
            "Revenue (USD M)": flat["revenue"],
            "Year Established": flat["year_established"],
            "Sales Agent": flat["sales_agent"],
            "Regional Office": flat["regional_office"],
            "Product": flat["product"],
            "Deal Stage": flat["deal_stage"],
            "Engage Date": day("engage_date"),
            "Close Date": day("close_date"),
            "Close Value": value.map(lambda v: f"${v:,.2f}").where(value.notna(), ""),
        }
    )


if __name__ == "__main__":
    out = HERE / "deals.csv"
    flat_report().to_csv(out, index=False)
    print(f"wrote {out}")
