"""The runner in-process, with a store that stops taking writes halfway."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from helpers import fake_command, journal_entries, open_store

from batchrun import CommandTemplate, EvalSet, RunPlan, StoreError
from batchrun._console import Console
from batchrun.runner import Runner


class FailingAfter:
    """A backend that raises StoreError on every create after the first *allowed* ones."""

    def __init__(self, inner: Any, allowed: int) -> None:
        self.inner = inner
        self.allowed = allowed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create(self, path: str, data: bytes, *, durable: bool) -> None:
        if self.allowed <= 0:
            msg = "progress store: cannot create (simulated outage)"
            raise StoreError(msg)
        self.allowed -= 1
        self.inner.create(path, data, durable=durable)


def test_a_store_that_stops_taking_writes_stops_the_run(tmp_path: Path) -> None:
    """When records can no longer be written, no further eval starts and the run raises StoreError."""
    journal = tmp_path / "journal"
    store = open_store(str(tmp_path / "p.txt"))
    store.backend = FailingAfter(store.backend, allowed=3)  # type: ignore[assignment]
    names = tuple(f"e{i}" for i in range(20))
    template = CommandTemplate.parse(fake_command(journal))
    console = Console(out=io.BytesIO(), err=io.StringIO(), bar=False)
    runner = Runner(RunPlan("m", EvalSet("s", names, "test"), template), store, console)
    with pytest.raises(StoreError, match="simulated outage"):
        runner.run()
    started = [e for e in journal_entries(journal) if e[0] == "start"]
    assert 1 <= len(started) < 10
