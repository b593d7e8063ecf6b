"""A batch run against the tier history: the stability policy applied to this run's base
tiers, "why did my tier change" for every account that moved, and the run recorded.

Batch scoring calls three hooks, in order: :meth:`RunHistory.prepare` once the whole list has
its base tiers (before any reason text is phrased, so texts speak of the final tier),
:meth:`RunHistory.annotate` on every scored chunk (adds the history columns of the scores
file and the CRM write-back, keeps the rows for the store) and :meth:`RunHistory.commit` once
every chunk is written (one transaction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from serving.history import TYPED_COLUMNS, HistoryStore, RunRecord
from tiering.capacity import Pin, PinnedTiers, stabilise_within
from tiering.config import Config, TierPolicy
from tiering.elevation import Elevation
from tiering.reuse import CACHE_COLUMNS, FINGERPRINT_COLUMN, PACKED_COLUMN, ReasonCache
from tiering.stability import (
    CHANGE_GATE,
    CHANGE_NEW,
    HOLD,
    Previous,
    StableTiers,
    change_texts,
    is_review,
)

if TYPE_CHECKING:
    from serving.batch import TieredPopulation
    from tiering.bundle import Bundle

HISTORY_COLUMNS = ["base_tier", "previous_tier", "tier_since", "change_reason"]
"""Added to the scores file after the reason columns."""
CRM_HISTORY_COLUMNS = ("previous_tier", "tier_since", "change_reason")
"""Added to the CRM write-back."""
# Scores columns that are not the model's figures (the figures ride in one JSON column).
NOT_FIGURES = TYPED_COLUMNS | {"cutoffs_used", "model_version", "account_id"}


def drivers_of(reasons: Any) -> dict[str, float]:
    """The points each reason contributes, by label (what a change reason diffs)."""
    if not isinstance(reasons, list | tuple | np.ndarray):
        return {}
    return {
        str(d["label"]): round(float(d["effect_points"]), 2)
        for d in reasons
        if isinstance(d, Mapping) and "label" in d and "effect_points" in d
    }


class RunHistory:
    """The history side of one batch run."""

    def __init__(
        self,
        store: HistoryStore,
        config: Config,
        as_of: pd.Timestamp,
        *,
        accounts: pd.DataFrame,
        model_version: str,
        policy: TierPolicy,
        source: str = "batch",
    ) -> None:
        self.store = store
        self.config = config
        self.as_of = pd.Timestamp(as_of).normalize()
        self.model_version = model_version
        self.policy = policy
        self.source = source
        cols = [c for c in ("account_id", "owner", "territory") if c in accounts]
        self.accounts = accounts[cols].drop_duplicates("account_id").set_index("account_id")
        self.stable: StableTiers | None = None
        self.extra: pd.DataFrame | None = None
        self.previous_drivers: dict[str, dict[str, float]] = {}
        self.previous_cutoffs: tuple[float | None, float | None] | None = None
        self.parts: list[pd.DataFrame] = []
        self.pinned: PinnedTiers | None = None
        self.position: dict[str, int] = {}
        self.pin_tiers: dict[str, int] = {}
        self.signal: pd.DataFrame | None = None
        """This run's intent signal per account (``tiering.elevation.intent_signal``), set
        before :meth:`prepare` when elevation is on."""
        self.started: list[Elevation] = []
        self.elevated: list[Elevation] = []
        """Every elevation holding a seat this run (running and started)."""
        self.explainer_key: str | None = None
        self.explained: list[pd.DataFrame] = []
        """The SHAP values explained afresh in this run, to store at :meth:`commit`."""
        self.reused = 0

    def reason_cache(self, bundle: Bundle) -> ReasonCache:
        """The stored SHAP values of the bundle's models (none with ``[history]
        reuse_reasons = false``: every account is explained, and stored for the next run)."""
        self.explainer_key = bundle.explainer_key()
        if not self.config.history.reuse_reasons:
            return ReasonCache(self.explainer_key)
        return ReasonCache(self.explainer_key, self.store.contributions(self.explainer_key))

    def _elevations(
        self, ids: np.ndarray, base_tier: np.ndarray, population: TieredPopulation
    ) -> dict[int, Pin]:
        """Running elevations and new ones in the free reserved seats of each group."""
        from serving.elevations import running_elevations
        from tiering.elevation import select_elevations

        if self.signal is None:
            return {}
        grouped = population.grouped
        group = grouped.plan.group if grouped is not None else np.full(ids.size, "all", object)
        reserved = (
            dict(zip(grouped.groups["group"], grouped.groups["reserved"], strict=True))
            if grouped is not None
            else {}
        )
        running = running_elevations(self.store, self.as_of.date())
        pins: dict[int, Pin] = {}
        taken: dict[str, int] = {}
        for e in running:
            pos = self.position.get(e.account_id)
            if pos is not None:
                self.elevated.append(e)
                pins[pos] = Pin(1, e.describe(), "elevation")
                taken[str(group[pos])] = taken.get(str(group[pos]), 0) + 1
        free = {str(k): int(v) - taken.get(str(k), 0) for k, v in reserved.items()}
        signal = self.signal.set_index("account_id").reindex(ids).reset_index()
        self.started = select_elevations(
            signal,
            base_tier,
            group,
            free,
            self.as_of,
            self.config.elevation,
            running={e.account_id for e in running},
        )
        for e in self.started:
            pins[self.position[e.account_id]] = Pin(1, e.describe(), "elevation")
        self.elevated.extend(self.started)
        return pins

    def _pins(
        self,
        ids: np.ndarray,
        prev_run: pd.Series | None,
        base_tier: np.ndarray,
        population: TieredPopulation,
    ) -> tuple[dict[int, Pin], dict[int, str]]:
        """Overrides in force on this run's date (and elevations), and the pins of the
        previous run that ended since."""
        from serving.overrides import active_overrides, ended_overrides

        self.position = {a: i for i, a in enumerate(ids)}
        day = self.as_of.date()
        pins = self._elevations(ids, base_tier, population)
        for o in active_overrides(self.store, today=day):
            pos = self.position.get(o.account_id)
            if pos is not None:
                pins[pos] = Pin(o.tier, o.describe(), "override")
                self.pin_tiers[o.account_id] = o.tier
        ended: dict[int, str] = {}
        if prev_run is not None:
            gone = ended_overrides(
                self.store,
                since_as_of=pd.Timestamp(prev_run["as_of"]).date(),
                since=prev_run["created_at"],
                as_of=day,
            )
            if self.signal is not None:
                from serving.elevations import ended_elevations as ended_elev

                for account, text in ended_elev(
                    self.store, pd.Timestamp(prev_run["as_of"]).date(), day
                ).items():
                    gone.setdefault(account, text)
            for account, text in gone.items():
                pos = self.position.get(account)
                if pos is not None and pos not in pins:
                    ended[pos] = text
        return pins, ended

    # --------------------------------------------------------------------- the policy
    def prepare(self, population: TieredPopulation) -> TieredPopulation:
        """The population with its tiers under the stability policy."""
        from serving.batch import TieredPopulation

        prev_run = self.store.previous_run(self.as_of)
        prev_rows = None
        if prev_run is not None:
            prev_rows = self.store.rows(
                run_id=str(prev_run["run_id"]),
                columns=["account_id", "tier", "ceiling", "priority", "tier_since", "drivers"],
            )
            self.previous_drivers = dict(
                zip(prev_rows["account_id"].astype(str), prev_rows["drivers"], strict=True)
            )
            cuts = prev_run["cutoffs"] or {}
            self.previous_cutoffs = (cuts.get("tier1"), cuts.get("tier12"))
        review = is_review(
            self.as_of,
            self.store.last_review(self.as_of),
            self.config.stability.review_months,
        )
        scores = population.scores
        ids = scores["account_id"].astype(str).to_numpy()
        previous = Previous.align(list(ids), prev_rows)
        base = population.assignment
        pins, ended = self._pins(ids, prev_run, base.tier, population)
        pinned = stabilise_within(
            scores["priority"].to_numpy(dtype=np.float64),
            base.ceiling,
            base.tier,
            previous,
            self.config.stability,
            review=review,
            group=population.grouped.plan.group if population.grouped is not None else None,
            pins=pins,
            ended=ended,
        )
        stable = pinned.stable
        self.pinned = pinned
        self.stable = stable
        since = pd.Series(self.as_of, index=ids)
        if prev_rows is not None:
            kept = pd.Series(
                pd.to_datetime(prev_rows["tier_since"]).to_numpy(),
                index=prev_rows["account_id"].astype(str),
            )
            same = stable.tier == previous.tier
            since[same] = kept.reindex(ids[same]).fillna(self.as_of).to_numpy()
        self.extra = pd.DataFrame(
            {
                "base_tier": base.tier.astype(np.int64),
                "previous_tier": pd.array(
                    np.where(previous.tier > 0, previous.tier, 0), dtype="Int64"
                ),
                "previous_priority": previous.priority,
                "tier_since": since.to_numpy(),
                "ceiling": base.ceiling.astype(np.int64),
                "change_code": stable.change,
                "hold": stable.hold,
            },
            index=ids,
        )
        self.extra.loc[previous.tier == 0, "previous_tier"] = pd.NA
        tiers = stable.tier.astype(np.int64)
        return TieredPopulation(
            scores.assign(tier=tiers),
            population.icp,
            dataclasses.replace(base, tier=stable.tier.astype(np.int8)),
            population.grouped,
        )

    # --------------------------------------------------------------------- per chunk
    def annotate(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The chunk with the history columns, and its rows kept for the store."""
        if self.extra is None or self.stable is None:
            raise RuntimeError("RunHistory.prepare must run before annotate")
        ids = chunk["account_id"].astype(str).to_numpy()
        fingerprints = self._keep_explained(chunk, ids)
        chunk = chunk.drop(columns=[c for c in CACHE_COLUMNS if c in chunk])
        extra = self.extra.loc[list(ids)]
        drivers = (
            [drivers_of(r) for r in chunk["reasons"]] if "reasons" in chunk else [{} for _ in ids]
        )
        prev_drivers = [self.previous_drivers.get(a) for a in ids]
        code = extra["change_code"].to_numpy(dtype=object)
        tier = chunk["tier"].to_numpy(dtype=np.int64)
        prev_tier = extra["previous_tier"].fillna(0).to_numpy(dtype=np.int64)
        pos = [self.position[a] for a in ids]
        pin_text = [self.pinned.pin_text[p] for p in pos] if self.pinned is not None else None
        account_cutoffs = (
            [
                tuple(None if not np.isfinite(c) else float(c) for c in self.pinned.cutoffs[p])
                for p in pos
            ]
            if self.pinned is not None
            else None
        )
        reason = change_texts(
            code,
            tier,
            prev_tier,
            chunk["priority"].to_numpy(dtype=np.float64),
            extra["previous_priority"].to_numpy(dtype=np.float64),
            self.stable.cutoffs,
            drivers=drivers,
            previous_drivers=prev_drivers,
            gate_text=self._gate_texts(chunk, code, tier, prev_tier),
            previous_cutoffs=self.previous_cutoffs,
            pin_text=pin_text,
            account_cutoffs=account_cutoffs,  # type: ignore[arg-type]  # pairs of floats
        )
        out = chunk.assign(
            base_tier=extra["base_tier"].to_numpy(),
            previous_tier=extra["previous_tier"].to_numpy(),
            tier_since=pd.to_datetime(extra["tier_since"]).dt.date.astype(str).to_numpy(),
            change_reason=reason,
        )
        hold = extra["hold"].to_numpy(dtype=bool)
        pinned = self.pinned.pinned[pos] if self.pinned is not None else np.zeros(len(ids), bool)
        if "tier_rule_text" in out and (hold.any() or pinned.any()):
            notes = out["tier_rule_text"].to_numpy(dtype=object).copy()
            for i in np.flatnonzero(hold):
                notes[i] = (
                    f"{notes[i]}; {self._hold_note(int(tier[i]), int(extra['base_tier'].iloc[i]))}"
                )
            for i in np.flatnonzero(pinned):
                notes[i] = f"Tier {int(tier[i])}: {pin_text[i]}"  # type: ignore[index]
            out["tier_rule_text"] = notes
        if self.signal is not None:
            until = {e.account_id: e.until.date().isoformat() for e in self.elevated}
            out = out.assign(elevated_until=[until.get(a, "") for a in ids])
        self.parts.append(self._rows(out, extra, drivers).assign(input_fingerprint=fingerprints))
        return out

    def _keep_explained(self, chunk: pd.DataFrame, ids: np.ndarray) -> np.ndarray | None:
        """The chunk's input fingerprints; its freshly explained SHAP values kept for the
        store and its reused ones counted."""
        if FINGERPRINT_COLUMN not in chunk:
            return None
        fingerprints = chunk[FINGERPRINT_COLUMN].to_numpy(dtype=object)
        packed = chunk[PACKED_COLUMN].to_numpy(dtype=object)
        fresh = np.array([p is not None for p in packed], dtype=bool)
        self.reused += int((~fresh).sum())
        if fresh.any():
            self.explained.append(
                pd.DataFrame(
                    {
                        "account_id": ids[fresh],
                        "explainer_key": self.explainer_key,
                        "input_fingerprint": fingerprints[fresh],
                        "contributions": packed[fresh],
                    }
                )
            )
        return fingerprints

    def _hold_note(self, tier: int, base: int) -> str:
        s = self.config.stability
        if self.stable is not None and self.stable.review:
            return (
                f"{HOLD} in Tier {tier} (priority alone gives Tier {base}): at a review an "
                f"incumbent keeps its seat unless beaten by more than {s.review_margin:.2f}"
            )
        return (
            f"{HOLD} in Tier {tier} until the next review (priority alone gives Tier {base}): "
            f"between reviews a tier changes only when priority passes the cut-off by more "
            f"than {s.change_margin:.2f} or a gate changes"
        )

    def _gate_texts(
        self,
        chunk: pd.DataFrame,
        code: Sequence[str] | np.ndarray,
        tier: np.ndarray,
        prev_tier: np.ndarray,
    ) -> list[str]:
        p = self.policy
        fit = chunk["icp_fit"].to_numpy(dtype=np.float64) if "icp_fit" in chunk else None
        evid = chunk["evidence"].to_numpy(dtype=np.float64) if "evidence" in chunk else None
        out = []
        for i, c in enumerate(code):
            if c != CHANGE_GATE:
                out.append("")
                continue
            facts = []
            if fit is not None:
                facts.append(f"ICP fit {fit[i]:.0f} (Tier 1 needs {p.min_icp_fit_tier1:.0f})")
            if evid is not None:
                facts.append(f"evidence {evid[i]:.2f} (Tier 1 needs {p.min_evidence_tier1:.2f})")
            if tier[i] > prev_tier[i]:
                text = f"a gate no longer allows Tier {prev_tier[i]}"
            else:
                text = f"the gate that held it below Tier {tier[i]} opened"
            out.append(text + (": " + ", ".join(facts) if facts else ""))
        return out

    def _rows(
        self, scored: pd.DataFrame, extra: pd.DataFrame, drivers: list[dict[str, float]]
    ) -> pd.DataFrame:
        figure_cols = [
            c
            for c in scored.columns
            if c not in NOT_FIGURES
            and c not in HISTORY_COLUMNS
            and (pd.api.types.is_numeric_dtype(scored[c]) or c == "tier_rule")
        ]
        figures = scored[figure_cols].to_dict("records")
        ids = scored["account_id"].astype(str)
        acc = self.accounts.reindex(ids)
        return pd.DataFrame(
            {
                "account_id": ids.to_numpy(),
                "tier": scored["tier"].to_numpy(dtype=np.int64),
                "base_tier": extra["base_tier"].to_numpy(dtype=np.int64),
                "previous_tier": extra["previous_tier"].to_numpy(),
                "tier_since": extra["tier_since"].to_numpy(),
                "ceiling": extra["ceiling"].to_numpy(dtype=np.int64),
                "priority": scored["priority"].to_numpy(dtype=np.float64),
                "owner": acc["owner"].to_numpy(dtype=object) if "owner" in acc else None,
                "territory": (
                    acc["territory"].to_numpy(dtype=object) if "territory" in acc else None
                ),
                "change_code": extra["change_code"].to_numpy(dtype=object),
                "change_reason": scored["change_reason"].to_numpy(dtype=object),
                "reason_summary": (
                    scored["reason_summary"].fillna("").to_numpy(dtype=object)
                    if "reason_summary" in scored
                    else ""
                ),
                "figures": figures,
                "drivers": drivers,
            }
        )

    # --------------------------------------------------------------------- the record
    def commit(self) -> str:
        if self.stable is None:
            raise RuntimeError("RunHistory.prepare must run before commit")
        run = RunRecord(
            as_of=self.as_of,
            model_version=self.model_version,
            review=self.stable.review,
            n_accounts=int(self.stable.tier.size),
            policy={
                "tiers": self.policy.model_dump(mode="json"),
                "stability": self.config.stability.model_dump(mode="json"),
            },
            cutoffs={"tier1": self.stable.cutoffs[0], "tier12": self.stable.cutoffs[1]},
            source=self.source,
            reasons_reused=self.reused if self.explainer_key is not None else None,
            reasons_explained=(
                sum(len(f) for f in self.explained) if self.explainer_key is not None else None
            ),
        )
        run_id = self.store.record_run(run, self.parts, contributions=self.explained)
        if self.signal is not None:
            from serving.elevations import record_elevations

            record_elevations(self.store, self.as_of.date(), self.started)
        return run_id


def open_history(config: Config) -> HistoryStore:
    from serving.history import history_url
    from tiering.store import resolve_uri

    return HistoryStore(history_url(config.history.url, resolve_uri(config.mlflow.tracking_uri)[0]))


def describe_run(config: Config, as_of: pd.Timestamp) -> str:
    """One line on what the history made of a run: recorded where, review or not, how many
    accounts changed tier and how many the stability policy held."""
    if not config.history.enabled:
        return "history:  off ([history] enabled = false)"
    store = open_history(config)
    runs = store.runs()
    run = runs[runs["as_of"] == pd.Timestamp(as_of).normalize()]
    if run.empty:
        return f"history:  no run of {pd.Timestamp(as_of).date()} in {store.shown()}"
    rows = store.rows(
        run_id=str(run["run_id"].iloc[0]), columns=["tier", "base_tier", "change_code"]
    )
    new = int((rows["change_code"] == CHANGE_NEW).sum())
    moved = int((rows["change_code"] != "").sum()) - new
    held = int((rows["tier"] != rows["base_tier"]).sum())
    kind = "a review" if bool(run["review"].iloc[0]) else "between reviews"
    line = (
        f"history:  {store.shown()} ({kind}): {_accounts(moved)} changed tier, "
        + (f"{new:,} tiered for the first time, " if new else "")
        + f"{held:,} held by the stability policy"
    )
    reused, explained = run["reasons_reused"].iloc[0], run["reasons_explained"].iloc[0]
    if pd.notna(reused) and pd.notna(explained):
        line += f"\nreasons:  {_accounts(int(explained))} explained, " + (
            f"{int(reused):,} reused their SHAP values (model input and models unchanged; "
            "--fresh-reasons recomputes)"
            if reused
            else "none reused"
        )
    return line


def _accounts(n: int) -> str:
    """ "1 account", "2,500 accounts"."""
    return f"{n:,} account{'' if n == 1 else 's'}"
