"""Helpers of the state-folder tests (test_state_store.py, test_state_review.py): attempts,
keepers on a local root, and local folders written and read as a tool would.
"""

from __future__ import annotations

import time
from pathlib import Path

from batchrun._state import Attempt
from batchrun._statefiles import scan
from batchrun.plan import StateConfig
from batchrun.progress import ProgressStore
from batchrun.state import StateKeeper


def attempt(name: str, number: int, epoch: int = 0, writer: str = "w") -> Attempt:
    return Attempt(f"{writer}-{number}", name, number, "worker", time.time(), epoch=epoch)


def keeper(store: ProgressStore, root: Path, *, interval: float = 30.0, keep_state: bool = False) -> StateKeeper:
    return StateKeeper(store, StateConfig(str(root), interval, keep_state), "model", "set")


def write(folder: str | Path, files: dict[str, str | None]) -> None:
    """Write (or with None, delete) files below *folder*, in order, with distinct mtimes."""
    for name, text in files.items():
        path = Path(folder, name)
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            time.sleep(0.002)  # distinct mtimes: the order a tool wrote in


def contents(folder: str | Path) -> dict[str, str]:
    return {name: Path(folder, name).read_text(encoding="utf-8") for name in scan(str(folder))}
