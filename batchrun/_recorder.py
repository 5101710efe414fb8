"""Group commit: records queued by many threads are written together, one object per batch.

A record that someone waits for (an attempt's start, before its process launches) is written at
once, together with whatever else is queued; one nobody waits for yet (an attempt's end, whose
acknowledgement can follow) may linger briefly for company. With one eval at a time that makes
one write per eval: the end of one and the start of the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")

LINGER_S = 0.05


class GroupCommit(Generic[T]):
    """Batches items for *write*; each submit returns a Future resolved when its batch is written."""

    def __init__(self, write: Callable[[Sequence[T]], None], linger: float = LINGER_S) -> None:
        """Nothing runs until the first :meth:`submit`."""
        self._write = write
        self._linger = linger
        self._cond = threading.Condition()
        self._queue: list[tuple[T, Future[None]]] = []
        self._writing: list[tuple[T, Future[None]]] = []  # the batch being written now
        self._urgent = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, item: T, *, urgent: bool) -> Future[None]:
        """Queue *item*; *urgent* writes it (and everything queued) without lingering."""
        future: Future[None] = Future()
        with self._cond:
            if self._closed:
                msg = "the recorder is closed"
                raise RuntimeError(msg)
            self._queue.append((item, future))
            self._urgent = self._urgent or urgent
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="batchrun-recorder", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return future

    def flush(self) -> None:
        """Write everything queued now and wait for it, and for the batch being written (errors stay
        on the items' futures).
        """
        with self._cond:
            pending = [future for _, future in self._writing + self._queue]
            self._urgent = True
            self._cond.notify_all()
        for future in pending:
            future.exception()

    def wait_below(self, limit: int, stop: threading.Event, poll: float = 0.05) -> None:
        """Block while more than *limit* items are unwritten, or until *stop* is set (backpressure:
        work that produces records waits for the store instead of piling up what a kill loses).
        """
        with self._cond:
            while len(self._queue) + len(self._writing) > limit and not stop.is_set():
                self._urgent = True  # whoever waits wants the queue written now
                self._cond.notify_all()
                self._cond.wait(poll)

    def close(self) -> None:
        """Flush, then stop the writer thread."""
        with self._cond:
            self._closed = True
            self._urgent = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                if not self._urgent:
                    self._cond.wait_for(lambda: self._urgent, timeout=self._linger)
                batch, self._queue, self._urgent = self._queue, [], False
                self._writing = batch
            try:
                self._write([item for item, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the batch
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for _, future in batch:
                    future.set_result(None)
            with self._cond:
                self._writing = []
                self._cond.notify_all()
