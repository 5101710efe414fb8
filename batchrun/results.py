"""An eval's results: the state folder of the attempt that completed, kept at ``P.d/results/K/``
(state.py has the layout), and pulled to a local folder for a user to open.

Keeping is a copy inside the store, after the completion is recorded. It first claims the
results for its attempt (``P.d/results/K.json``, created create-only): of two completions of one
eval (a worker that lost its claim and completed anyway), the first keeps its results and the
other keeps nothing. A kill in the middle leaves the attempt's folder and marker in ``state/``,
so readers take the files from there until the next run's worker finishes the copy
(:func:`keep_unkept`); the state is deleted markers first, only once the copy is whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from batchrun._state import Outcome, RunState
from batchrun._statefiles import local_path, slug
from batchrun.errors import ConflictError
from batchrun.progress import ProgressStore, encode_key
from batchrun.state import attempt_numbers, forget, stored_folder, synced_attempts

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,119}")


def results_folder(store: ProgressStore, eval_name: str) -> str:
    """Where the state of *eval_name*'s completed attempt is kept."""
    return f"{store.location.sidecar}/results/{encode_key(eval_name)}"


def keep(store: ProgressStore, eval_name: str, number: int, names: list[str] | None = None) -> int:
    """Make attempt *number*'s stored state the results of *eval_name*, then delete the state of
    it and older attempts; the number of files kept (0 when there is nothing to keep, or another
    attempt's results are kept, or a newer attempt holds the eval). *names*: the listing of the
    eval's stored folder, if already made.
    """
    names = store.backend.listdir(stored_folder(store, eval_name)) if names is None else names
    markers = synced_attempts(store, eval_name, names)
    if number not in markers or any(n > number for n in markers) or not _claim(store, eval_name, number):
        return 0
    source = f"{stored_folder(store, eval_name)}/{number}"
    target = results_folder(store, eval_name)
    backend = store.backend
    files = backend.files(source)
    for name in sorted(files):
        store.guard()
        backend.copy(f"{source}/{name}", f"{target}/{name}")
    stale = [f"{target}/{name}" for name in backend.files(target) if name not in files]
    if stale:
        store.guard()
        backend.delete(stale)
    forget(store, eval_name, [n for n in attempt_numbers(names) if n <= number])
    return len(files)


def _claim(store: ProgressStore, eval_name: str, number: int) -> bool:
    """Claim the results of *eval_name* for attempt *number*; False when they are another's."""
    path = f"{results_folder(store, eval_name)}.json"
    mine = {"attempt": number, "generation": store.generation()}
    data = json.dumps(mine, sort_keys=True).encode()
    store.guard()
    try:
        store.backend.create(path, data, durable=True)
    except ConflictError:
        pass
    else:
        return True  # ours, now or from an earlier try of this keep
    blob = store.backend.read(path)
    held = _json(blob.data) if blob is not None else {}
    current = store.stored_generation()
    if store.generation() != current or held.get("generation") == current:
        return False  # this process outlived a reset, or another completion keeps its results
    try:  # a claim left by a process that outlived a reset: not this run's
        store.backend.replace(path, data, None if blob is None else blob.tag)
    except ConflictError:
        return False
    return True


def _json(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def completed_attempt(state: RunState, eval_name: str) -> int | None:
    """The number of the attempt that completed *eval_name*, if one did."""
    done = [a.number for a in state.of(eval_name) if a.outcome is Outcome.COMPLETED]
    return done[-1] if done else None


def keep_unkept(store: ProgressStore, state: RunState, evals: Iterable[str]) -> list[str]:
    """Finish keeping the results of completed evals whose state is still stored (a worker was
    killed while it kept them); the evals whose state it dealt with.
    """
    generation = store.generation() or "run"
    present = set(store.backend.listdir(f"{store.location.sidecar}/state/{generation}"))
    dealt: list[str] = []
    for name in evals:
        number = completed_attempt(state, name)
        if number is None or encode_key(name) not in present:
            continue
        names = store.backend.listdir(stored_folder(store, name))
        if number in synced_attempts(store, name, names):
            keep(store, name, number, names)
        else:  # its marker went: the copy was whole, the deletion was cut off
            forget(store, name, [n for n in attempt_numbers(names) if n <= number])
        dealt.append(name)
    return dealt


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
    """Make the local folder *target* hold the files of *found* and nothing else (with
    *suffixes*, only files ending so, outside dot-folders); (files, bytes). The files are
    downloaded beside it first, so a failed pull leaves an earlier one whole.
    """
    files = store.backend.files(found.folder)
    if suffixes is not None:
        files = {
            name: size
            for name, size in files.items()
            if name.endswith(suffixes) and not any(part.startswith(".") for part in name.split("/")[:-1])
        }
    pulled = {name: size for name, size in files.items() if local_path(target, name) is not None}
    if not pulled:
        return 0, 0
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    fresh = tempfile.mkdtemp(prefix=".pulling-", dir=parent)
    try:
        for name in sorted(pulled):
            path = str(local_path(fresh, name))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            store.backend.download(f"{found.folder}/{name}", path)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(fresh, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return len(pulled), sum(pulled.values())
