"""Answers for accounts named by id alone, scored ahead once per account snapshot.

A request that names an account by its id and nothing else has an answer fixed by three
things: the bundle, the snapshot row of the account, and the group cut-offs beside the
snapshot (a single request is tiered against frozen cut-offs, never against its batch). So the
service scores every account of the snapshot once, in the background, through the very call a
request goes through (``OnlineScorer._scored``, in chunks), and answers such requests by
lookup. Everything else is computed per request as before: accounts with fields of their own,
snapshots above ``max_accounts``, and every request while the table is being built or after the
snapshot or its group cut-offs changed (the table is rebuilt for the new ones).

Each answer is stored as the JSON of its ``AccountScore`` with reasons (about 3 KB; the model
objects took ten times that) and read back on lookup; the answer without reasons is the same
score with the reasons left out, as scoring without reasons gives it (both tested account by
account against the computed answers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from serving.schemas import AccountRequest, AccountScore
from serving.snapshot import Snapshot

logger = logging.getLogger("tiering.service")

# Accounts scored per call while building: large enough that a call's fixed cost vanishes,
# small enough that a worker's other thread (the requests) gets the interpreter often.
CHUNK = 500

Score = Callable[[list[AccountRequest], Snapshot, Any], list[tuple[AccountScore, str]]]
"""Scores accounts by id against a snapshot and its group cut-offs as a request would, with
reasons: (score, cut-offs used) each."""


@dataclass(frozen=True)
class _Table:
    snapshot: Snapshot
    groups: object
    answers: dict[str, tuple[bytes, str]]
    """Per account id: its ``AccountScore`` with reasons as JSON, and the cut-offs used."""

    @property
    def key(self) -> tuple[Snapshot, object]:
        return self.snapshot, self.groups


class PrecomputedScores:
    """The answers of one snapshot (and its group cut-offs), built in a background thread."""

    def __init__(self, score: Score, *, max_accounts: int, chunk: int = CHUNK) -> None:
        self.score = score
        self.max_accounts = max_accounts
        self.chunk = chunk
        self._table: _Table | None = None
        self._building: tuple[Snapshot, object] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def lookup(
        self,
        accounts: Sequence[AccountRequest],
        reasons: bool,
        snapshot: Snapshot | None,
        groups: object,
    ) -> list[tuple[AccountScore, str]] | None:
        """The stored answers of ``accounts`` (in order), or None unless every one of them is
        named by id alone and stored for this ``snapshot`` and ``groups``. Starts building
        the table of a new snapshot."""
        if snapshot is None or self.max_accounts <= 0:
            return None
        table = self._table_for(snapshot, groups)
        if table is None:
            self.build(snapshot, groups)
            return None
        found = []
        for account in accounts:
            # Any other field (a model input, an owner, a territory) may change the answer.
            if account.account_id is None or account.given().keys() != {"account_id"}:
                return None
            stored = table.answers.get(account.account_id)
            if stored is None:
                return None
            score = AccountScore.model_validate_json(stored[0])
            found.append((score if reasons else _without_reasons(score), stored[1]))
        return found

    def accounts(self, snapshot: Snapshot | None, groups: object) -> int:
        """How many accounts are answered from the table of ``snapshot`` and ``groups``."""
        table = self._table_for(snapshot, groups) if snapshot is not None else None
        return 0 if table is None else len(table.answers)

    def _table_for(self, snapshot: Snapshot, groups: object) -> _Table | None:
        """The table built for ``snapshot`` and ``groups``, if it is the one in place."""
        table = self._table
        return table if table is not None and _same(table.key, (snapshot, groups)) else None

    def build(self, snapshot: Snapshot, groups: object, *, wait: bool = False) -> None:
        """Score every account of ``snapshot`` in a background thread (``wait``: in this one),
        unless its table exists, is being built, or the snapshot is above ``max_accounts``."""
        if self.max_accounts <= 0 or len(snapshot.features) > self.max_accounts:
            return
        with self._lock:
            key = (snapshot, groups)
            if self._table_for(snapshot, groups) is not None:
                return
            if _same(self._building, key):
                thread = self._thread
            else:
                self._building = key
                thread = threading.Thread(
                    target=self._build, args=key, name="precompute-scores", daemon=True
                )
                self._thread = thread
                thread.start()
        if wait and thread is not None:
            thread.join()

    def _build(self, snapshot: Snapshot, groups: object) -> None:
        ids = snapshot.features.index.astype(str).tolist()
        answers: dict[str, tuple[bytes, str]] = {}
        try:
            for start in range(0, len(ids), self.chunk):
                if not _same(self._building, (snapshot, groups)):
                    return  # a newer snapshot took over
                part = ids[start : start + self.chunk]
                scored = self.score([AccountRequest(account_id=i) for i in part], snapshot, groups)
                answers.update(
                    (i, (score.model_dump_json().encode(), used))
                    for i, (score, used) in zip(part, scored, strict=True)
                )
        except Exception as exc:  # the requests are computed as before: say why, once
            logger.error("precomputed scores not built, requests are computed: %s", exc)
            return
        with self._lock:
            if _same(self._building, (snapshot, groups)):
                self._table = _Table(snapshot, groups, answers)
                self._building = None


def _same(a: tuple[Snapshot, object] | None, b: tuple[Snapshot, object]) -> bool:
    """The same snapshot and group cut-offs objects (identity: a re-read file is a new one)."""
    return a is not None and a[0] is b[0] and a[1] is b[1]


def _without_reasons(score: AccountScore) -> AccountScore:
    """The score as scoring without reasons gives it: no reasons, and no customer reasons."""
    update: dict[str, Any] = {"reasons": None}
    if score.customer is not None:
        update["customer"] = score.customer.model_copy(update={"reasons": []})
    return score.model_copy(update=update)
