"""Micro-batching for the HTTP service: requests that arrive while the model is busy share one model call.

A lone request is answered at once; under load the queue fills while the model runs, and the next call takes
everything queued (up to ``max_batch``), so one query-encoder forward serves many requests instead of one each.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Answers submitted items with ``run(items)`` on one worker thread, up to ``max_batch`` items a call.

    After taking the first item the worker takes what is already queued; only when others are queued too (requests
    are arriving together) does it wait up to ``max_wait_ms`` for the batch to fill, so a lone request is never
    delayed. An item whose future was cancelled before its batch started (its request timed out) is dropped, not
    computed. An exception of ``run`` goes to the futures of its own batch only.
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R]], max_batch: int = 32, max_wait_ms: float = 2.0):
        if max_batch < 1:
            raise ValueError(f"max_batch: expected at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: expected 0 or more, got {max_wait_ms}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()  # one worker at a time: start and close exclude each other

    def submit(self, item: T) -> Future:
        """Queue ``item``; the future gets its result (cancel it to drop the item while it is still queued)."""
        future: Future = Future()
        self._queue.put((item, future))
        with self._thread_lock:  # started here, not at construction: building an app starts no thread
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="kgdistill-batcher", daemon=True)
                self._thread.start()
        return future

    def pending(self) -> int:
        """Items queued and not yet taken by the worker."""
        return self._queue.qsize()

    def close(self) -> None:
        """Answer what is queued, then stop the worker (a later ``submit`` starts a new one)."""
        with self._thread_lock:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
            self._thread = None

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = self._fill(batch)
            self._answer(batch)
            if stop:
                return

    def _fill(self, batch: list) -> bool:
        """Add queued items to ``batch``; True when the stop mark was taken."""
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            wait = deadline - time.monotonic() if len(batch) > 1 else 0.0
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _answer(self, batch: list[tuple[T, Future]]) -> None:
        live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._run([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batched call returned {len(results)} results for {len(live)} items")
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            for _, future in live:
                future.set_exception(exc)
            return
        for (_, future), result in zip(live, results):
            future.set_result(result)
