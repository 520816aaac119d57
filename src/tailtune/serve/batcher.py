"""Dynamic batching: concurrent requests, of any tasks, share model calls.

Requests wait in an asyncio queue; the batcher takes the first, then keeps taking until the batch
holds ``max_batch`` texts or ``max_wait_ms`` have passed since the first, and runs the whole batch
(mixed tasks) in one worker thread. Model changes (adding or removing a task) run in the same
thread, between batches, so no prediction ever sees a half-changed set of tasks.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .metrics import Metrics


@dataclass
class _Request:
    task: str
    texts: list[str]
    texts_b: list[str] | None
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, host: Any, metrics: Metrics, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        self.host, self.metrics = host, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Request] | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailtune-model")
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish every queued request, then stop."""
        if self.queue is not None:
            await self.queue.join()
        if self._task is not None:
            self._task.cancel()
        self.worker.shutdown(wait=True)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the model thread (between batches)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def predict(self, task: str, texts: list[str], texts_b: list[str] | None = None) -> list:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(task, texts, texts_b, future))
        return await future

    async def _loop(self) -> None:
        while True:
            first = await self.queue.get()
            batch, size = [first], len(first.texts)
            deadline = first.arrived + self.max_wait
            while size < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                batch.append(nxt)
                size += len(nxt.texts)
            await self._run(batch, size)
            for _ in batch:
                self.queue.task_done()

    async def _run(self, batch: list[_Request], size: int) -> None:
        texts = [t for r in batch for t in r.texts]
        tasks = [r.task for r in batch for _ in r.texts]
        pairs = any(r.texts_b is not None for r in batch)
        texts_b = [b for r in batch for b in (r.texts_b or [""] * len(r.texts))] if pairs else None
        self.metrics.batch(size, len(batch))
        try:
            probs = await self.run(self.host.predict, texts, tasks, texts_b, self.max_batch)
        except Exception as e:  # every request of the batch gets the error
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        start = 0
        for r in batch:
            if not r.future.done():
                r.future.set_result(probs[start:start + len(r.texts)])
            start += len(r.texts)
