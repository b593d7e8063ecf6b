"""Adaptive batching of single-account requests: concurrent calls are answered by one model
call (the requests that arrived while the previous call computed, or, with a maximum latency
set, also those arriving within it).

BentoML's ``batchable`` APIs merge only HTTP calls to the batchable route itself: a sync call
of one from another API runs it alone, and ``self.to_async`` goes back through the service's
own HTTP stack (the API key, the limits, JSON both ways). So the service keeps its routes and
merges here, inside the worker, with the same two knobs (``TIERING_BATCH_MAX_SIZE``,
``TIERING_BATCH_MAX_LATENCY_MS``). ``compute`` is one call of ``serving.online.OnlineScorer``
on the whole batch, and returns one answer or one ``Exception`` per item, so a bad account
fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")

# One observation per model call: how many requests it answered.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Batcher(Generic[Item, Answer]):
    """Collects items until ``max_size`` are waiting or the first has waited
    ``max_latency_ms``, then runs ``compute`` on them in a thread (the event loop keeps
    accepting requests meanwhile, which form the next batch). With ``max_latency_ms`` 0 the
    batches are what arrived during the previous computation: one at low load, larger as the
    load grows, never a wait on an idle worker."""

    def __init__(
        self,
        compute: Callable[[list[Item]], Sequence[Answer | Exception]],
        *,
        max_size: int,
        max_latency_ms: float,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.compute = compute
        self.max_size = max_size
        self.max_latency = max_latency_ms / 1000
        self.observe = observe
        self._waiting: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # One batch computes at a time: the next one fills while it runs.
        self._lock = asyncio.Lock()

    async def __call__(self, item: Item) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self.max_size:
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            async with self._lock:
                if self.max_latency > 0 and len(self._waiting) < self.max_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.max_latency)
                batch = self._waiting[: self.max_size]
                del self._waiting[: self.max_size]
                self._full.clear()
                if len(self._waiting) >= self.max_size:
                    self._full.set()
                # A request whose client left is not computed.
                batch = [(item, future) for item, future in batch if not future.done()]
                if not batch:
                    continue
                if self.observe is not None:
                    self.observe(len(batch))
                try:
                    answers = await asyncio.to_thread(self.compute, [item for item, _ in batch])
                except Exception as exc:  # a fault of the whole call: every request gets it
                    answers = [exc] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
