"""An eval's results: the state folder of the attempt that completed, kept at ``P.d/results/K/``
(state.py has the layout), and pulled to a local folder for a user to open.

Keeping is a copy inside the store, after the completion is recorded: a kill in the middle leaves
the attempt's folder in ``state/`` whole, so readers take it from there until the next run's
worker finishes the copy (:func:`keep_unkept`) and deletes ``state/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from batchrun._state import Outcome, RunState
from batchrun._statefiles import local_path, slug
from batchrun.progress import ProgressStore, encode_key
from batchrun.state import results_folder, stored_folder, synced_attempts

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,119}")


def keep(store: ProgressStore, eval_name: str, number: int) -> int:
    """Make attempt *number*'s stored state the results of *eval_name*, then delete its state;
    the number of files kept.
    """
    source = f"{stored_folder(store, eval_name)}/{number}"
    target = results_folder(store, eval_name)
    backend = store.backend
    files = backend.files(source)
    for name in sorted(files):
        store.guard()
        backend.copy(f"{source}/{name}", f"{target}/{name}")
    stale = [f"{target}/{name}" for name in backend.files(target) if name not in files]
    store.guard()
    if stale:
        backend.delete(stale)
    backend.delete_tree(stored_folder(store, eval_name))
    return len(files)


def completed_attempt(state: RunState, eval_name: str) -> int | None:
    """The number of the attempt that completed *eval_name*, if one did."""
    done = [a.number for a in state.of(eval_name) if a.outcome is Outcome.COMPLETED]
    return done[-1] if done else None


def keep_unkept(store: ProgressStore, state: RunState, evals: Iterable[str]) -> list[str]:
    """Finish keeping the results of completed evals whose state is still stored (a worker was
    killed while it copied them); the evals whose results it kept.
    """
    folders = set(store.backend.listdir(f"{store.location.sidecar}/state"))
    kept: list[str] = []
    for name in evals:
        number = completed_attempt(state, name)
        if number is not None and encode_key(name) in folders:
            if number in synced_attempts(store, name):
                keep(store, name, number)
            else:
                store.guard()
                store.backend.delete_tree(stored_folder(store, name))
            kept.append(name)
    return kept


@dataclass(frozen=True, slots=True)
class Source:
    """Where an eval's files are stored now, and what they are."""

    folder: str
    kind: str  # "results", or "state" (an attempt's synced state)
    attempt: int | None = None


def source(store: ProgressStore, state: RunState, eval_name: str, *, unfinished: bool) -> Source | None:
    """Where to read *eval_name*'s files: its results (from ``state/`` while their keeping is
    unfinished), or with *unfinished*, the newest synced state of an eval not completed.
    """
    number = completed_attempt(state, eval_name)
    markers = synced_attempts(store, eval_name) if number is not None or unfinished else {}
    if number is not None:
        if number in markers:
            return Source(f"{stored_folder(store, eval_name)}/{number}", "results", number)
        return Source(results_folder(store, eval_name), "results")
    if unfinished and markers:
        newest = max(markers)
        return Source(f"{stored_folder(store, eval_name)}/{newest}", "state", newest)
    return None


def local_name(eval_name: str) -> str:
    """A local folder name for *eval_name*: the name itself when plain, else a slug plus hash."""
    return eval_name if _PLAIN.fullmatch(eval_name) else slug(eval_name)


def pull_files(
    store: ProgressStore, found: Source, target: str, suffixes: tuple[str, ...] | None = None
) -> tuple[int, int]:
    """Download the files of *found* into the local folder *target* (with *suffixes*, only files
    ending so, outside dot-folders); (files, bytes).
    """
    files = store.backend.files(found.folder)
    if suffixes is not None:
        files = {
            name: size
            for name, size in files.items()
            if name.endswith(suffixes) and not any(part.startswith(".") for part in name.split("/")[:-1])
        }
    pulled = {name: size for name, size in files.items() if local_path(target, name) is not None}
    for name in sorted(pulled):
        path = str(local_path(target, name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        store.backend.download(f"{found.folder}/{name}", path)
    return len(pulled), sum(pulled.values())
