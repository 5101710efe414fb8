"""Group commit: batching, urgency, and flush waiting for the batch in flight."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from batchrun._recorder import GroupCommit


def test_queued_items_go_out_together_with_an_urgent_one() -> None:
    """Items nobody waits for linger and leave in the same write as the next urgent item."""
    batches: list[list[int]] = []
    commit: GroupCommit[int] = GroupCommit(lambda items: batches.append(list(items)), linger=5.0)
    first = commit.submit(1, urgent=False)
    commit.submit(2, urgent=True).result(timeout=30)
    assert first.done()
    assert batches == [[1, 2]]
    commit.close()


def test_flush_waits_for_the_batch_being_written() -> None:
    """flush() returns only after a write already in progress has finished."""
    started, release, flushed = threading.Event(), threading.Event(), threading.Event()
    written: list[int] = []
    seen_by_flush: list[list[int]] = []

    def slow_write(items: Sequence[int]) -> None:
        started.set()
        release.wait(30)
        written.extend(items)

    def flush() -> None:
        commit.flush()
        seen_by_flush.append(list(written))
        flushed.set()

    commit: GroupCommit[int] = GroupCommit(slow_write)
    commit.submit(1, urgent=True)
    assert started.wait(30)
    flusher = threading.Thread(target=flush)
    flusher.start()
    assert not flushed.wait(0.2)  # the write is held: a flush that returned now would not have waited
    release.set()
    flusher.join(30)
    assert seen_by_flush == [[1]]
    commit.close()


def test_a_failed_write_fails_every_item_of_its_batch() -> None:
    """The write's exception reaches each item's future."""

    def failing(_items: Sequence[int]) -> None:
        msg = "store down"
        raise OSError(msg)

    commit: GroupCommit[int] = GroupCommit(failing, linger=5.0)
    lazy = commit.submit(1, urgent=False)
    urgent = commit.submit(2, urgent=True)
    assert isinstance(urgent.exception(timeout=30), OSError)
    assert isinstance(lazy.exception(timeout=30), OSError)
    commit.close()
