"""From request accounts to the model's feature rows.

An account named by id takes its row from the account snapshot; an account described by its
own fields (a new account) goes through the feature builder, the one code path from account
columns to model inputs, with no deal history; both together lay the given fields over the
snapshot row. Plain Python, no BentoML, so it is used and tested on its own.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import numpy as np
import pandas as pd

from features.config import FeatureConfig
from serving.schemas import AccountRequest, Problem
from serving.snapshot import Snapshot
from tiering.bundle import Bundle


class RequestRejected(Exception):
    """A well-formed request that cannot be answered (an unknown account id, a value of the
    wrong kind for a model input): the HTTP status, the field path and the rule."""

    def __init__(
        self, path: str, rule: str, status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY
    ) -> None:
        super().__init__(f"{path}: {rule}")
        self.status = status


class RequestFeatures:
    """Feature rows for request accounts, for one bundle and feature config."""

    def __init__(self, bundle: Bundle, feature_config: FeatureConfig) -> None:
        self.bundle = bundle
        self.feature_config = feature_config
        names = set(bundle.feature_names)
        declared = [
            *feature_config.categorical,
            *feature_config.numeric,
            *feature_config.technographics,
            *feature_config.extra,
        ]
        # The model inputs an account's own fields determine (the rest is history/engagement).
        self.account_features = [c for c in dict.fromkeys(declared) if c in names]
        self._levels = {
            name: {str(level).casefold(): level for level in levels}
            for name, levels in bundle.categories.items()
        }

    def rows(
        self,
        accounts: list[AccountRequest],
        snapshot: Snapshot | None,
        path: str = "accounts",
        warnings: list[Problem] | None = None,
    ) -> tuple[pd.DataFrame, list[str]]:
        """One feature row per request account (same order) and where each came from; a
        category the model never saw is scored as unknown and named in ``warnings``."""
        as_of = snapshot.as_of if snapshot is not None else pd.Timestamp.today().normalize()

        def where(i: int) -> str:
            return f"{path}[{i}]" if path == "accounts" else path

        given = [self._given(account, where(i)) for i, account in enumerate(accounts)]
        if snapshot is not None:
            ids = pd.Index([a.account_id if a.account_id is not None else "" for a in accounts])
            position = snapshot.features.index.get_indexer(ids)
        else:
            position = np.full(len(accounts), -1)
        for i, account in enumerate(accounts):
            if position[i] < 0 and not given[i]:
                lookup = (
                    f"the account snapshot as of {snapshot.as_of.date()}"
                    if snapshot is not None
                    else "any account snapshot (none written yet: run `tiering score`)"
                )
                raise RequestRejected(
                    f"{where(i)}.account_id",
                    f"{account.account_id!r} is not in {lookup}, and no account fields were given; "
                    "send the account's own fields (industry, employees, ...) to score it as new",
                    HTTPStatus.NOT_FOUND,
                )
        columns = ["account_id", "as_of", *self.bundle.feature_names]
        known = position >= 0
        if snapshot is not None and known.all() and not any(given):
            # The common case (CRM sync by id): the snapshot rows are already typed.
            frame = snapshot.features.iloc[position].reindex(columns=columns)
            frame = frame.reset_index(drop=True)
            return _with_customer_columns(frame, snapshot, position), ["snapshot"] * len(accounts)
        cold = snapshot.cold_start if snapshot is not None else {}
        base = pd.DataFrame(
            [{name: cold.get(name, np.nan) for name in columns}] * len(accounts), columns=columns
        ).astype(object)
        if known.any() and snapshot is not None:
            rows = snapshot.features.iloc[position[known]]
            base.loc[known, columns] = rows.reindex(columns=columns).to_numpy(dtype=object)
        base["account_id"] = [a.account_id for a in accounts]
        base["as_of"] = as_of
        if any(given):
            unseen = self._lay_over_fields(base, given, as_of)
            if warnings is not None:
                warnings.extend(
                    Problem(
                        path=f"{where(i)}.{name}",
                        rule="unknown_category",
                        message=f"{name} {value!r} is not among the values the model was "
                        f"trained on ({self._known(name)}); scored as unknown",
                    )
                    for i, name, value in unseen
                )
        frame = _with_customer_columns(self._typed(base), snapshot, position)
        sources = [
            ("snapshot+fields" if given[i] else "snapshot") if known[i] else "fields"
            for i in range(len(accounts))
        ]
        return frame, sources

    def _given(self, account: AccountRequest, where: str) -> dict[str, Any]:
        """The account's own fields that are model inputs; unknown technographics or
        attributes are refused (a typo would silently change nothing), and so is text for a
        numeric input (it would silently become "unknown")."""
        for group, values in (
            ("technographics", account.technographics),
            ("attributes", account.attributes),
        ):
            unknown = [k for k in values if k not in self.account_features]
            if unknown:
                raise RequestRejected(
                    f"{where}.{group}.{unknown[0]}",
                    f"not an input of the model; it knows {sorted(self.account_features)}",
                )
        for key, value in account.attributes.items():
            if key not in self.bundle.categories and isinstance(value, str):
                raise RequestRejected(
                    f"{where}.attributes.{key}",
                    f"a number is expected (a numeric model input), got {value!r}",
                    HTTPStatus.BAD_REQUEST,
                )
        return {k: v for k, v in account.given().items() if k in self.account_features}

    def _known(self, name: str, shown: int = 8) -> str:
        levels = sorted(str(level) for level in self.bundle.categories[name])
        return ", ".join(levels[:shown]) + (", ..." if len(levels) > shown else "")

    def _lay_over_fields(
        self, base: pd.DataFrame, given: list[dict[str, Any]], as_of: pd.Timestamp
    ) -> list[tuple[int, str, Any]]:
        """Put the given fields through the feature builder and write them over the base
        rows, cell by cell; returns (row, field, value) of the categories the model never
        saw."""
        from features.build import account_features

        rows = [i for i, g in enumerate(given) if g]
        accounts = pd.DataFrame([{"account_id": f"request-{i}", **given[i]} for i in rows])
        for name in self.account_features:
            if name not in accounts:
                accounts[name] = np.nan
        built = account_features(accounts, as_of, self.feature_config)
        unseen: list[tuple[int, str, Any]] = []
        for j, i in enumerate(rows):
            for name in given[i]:
                value = built[name].iloc[j]
                if name in self._levels and isinstance(value, str):
                    if value.casefold() not in self._levels[name]:
                        unseen.append((i, name, given[i][name]))
                    value = self._levels[name].get(value.casefold(), value)
                base.at[i, name] = value
        return unseen

    def _typed(self, base: pd.DataFrame) -> pd.DataFrame:
        """Categoricals as plain strings (NaN when unknown), everything else float, as
        ``build_features`` returns them."""
        numeric = [n for n in self.bundle.feature_names if n not in self.bundle.categories]
        text = [n for n in self.bundle.feature_names if n in self.bundle.categories]
        # One conversion for the whole numeric block: the cells are floats or None already.
        values = np.asarray(base[numeric].to_numpy(), dtype=float)
        out = pd.concat(
            [
                base[["account_id", "as_of"]],
                base[text].where(base[text].notna(), np.nan),
                pd.DataFrame(values, columns=numeric, index=base.index),
            ],
            axis=1,
        )
        return out[["account_id", "as_of", *self.bundle.feature_names]]


def _with_customer_columns(
    frame: pd.DataFrame, snapshot: Any, position: np.ndarray
) -> pd.DataFrame:
    """The snapshot's customer columns (``cs_``) of the known accounts beside their model
    inputs, for the customer tier (``tiering.customers``); missing for accounts not in it."""
    if snapshot is None:
        return frame
    all_names, block = snapshot.customer_block
    wanted = [k for k, c in enumerate(all_names) if c not in frame]
    if not wanted:
        return frame
    values = np.full((len(frame), len(wanted)), np.nan)
    known = position >= 0
    if known.any():
        values[known] = block[np.ix_(position[known], np.asarray(wanted, dtype=np.intp))]
    names = [all_names[k] for k in wanted]
    return pd.concat([frame, pd.DataFrame(values, columns=names, index=frame.index)], axis=1)
