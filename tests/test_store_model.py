"""A model-based test of the progress store (issue 7, item 21).

Hypothesis drives two writer slots (each a store instance, as a separate process would open
one) through starts, ends, compactions, resets and loads, interleaves their backend calls one at
a time (tests/stepping.py), kills writers between any two calls, and checks what the store holds
against a model of what it must hold. Each broken property raises its own exception class, so
Hypothesis shrinks and reports each separately:

    LostRecord        an acknowledged record is missing from a later load, with no reset since
    FalseRecord       a load shows a record no writer wrote (an imported progress file, say)
    Resurrected       a record acknowledged before a reset is back once the reset and every
                      operation in flight during it ended
    DuplicateAttempt  two start() calls succeeded for the same eval and attempt number
    SpuriousTaken     AttemptTakenError although no other start() claimed that number since a reset
    PBackwards        the progress file lost a name between two observations, no reset about
    FalseP            the progress file names an eval that load() does not show done
    StaleP            once everything ended and another instance compacted, the progress file is
                      not the evals load() shows done
    Crash             an operation raised something other than StoreError
    Unloadable        another instance's load() fails between two calls (after kills, say)
    Stuck             an operation neither reached its next backend call nor ended (stepping.py)

In a failing example Hypothesis prints, each rule's notes (the operation begun, each backend call
let through, as ``method(path)`` with P for the progress file, each end) come just before the
``state.RULE()`` line that caused them. Writer slot w0's process after a kill is w0#2, and so on.

CI runs a bounded, derandomized number of examples without an example database. For a long hunt:
``BATCHRUN_MODEL_EXAMPLES=1000`` (random seeds; a failure prints its ``@reproduce_failure`` blob)
and ``BATCHRUN_MODEL_SKIP=DuplicateAttempt,...`` to look past a known failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from store_machine import MAX_FINISH_CALLS, StoreModel

from batchrun._state import Outcome

pytestmark = pytest.mark.model

_examples = itertools.count()


def _examples_for(backend: str) -> int:
    wanted = os.environ.get("BATCHRUN_MODEL_EXAMPLES")
    if wanted:
        return max(1, int(wanted) // (1 if backend in ("memory", "local") else 10))
    return {"memory": 80, "local": 40}.get(backend, 4)  # S3 servers: about 3 s an example


def _example_uri(uri: str) -> str:
    """A location of its own for each example, beside the fixture's."""
    head, _, tail = uri.rpartition("/")
    return f"{head}/ex{next(_examples)}/{tail}"


def test_store_keeps_its_promises_under_any_interleaving(progress_uri: str, request: pytest.FixtureRequest) -> None:
    """Random interleavings of writers' starts, ends, compactions, resets, loads and kills, call by
    call, keep every acknowledged record, invent none, keep attempt numbers unique and P monotone.
    """
    backend = request.node.callspec.params["progress_uri"]
    hunting = bool(os.environ.get("BATCHRUN_MODEL_EXAMPLES"))
    run_state_machine_as_test(
        lambda: StoreModel(_example_uri(progress_uri)),
        settings=settings(
            max_examples=_examples_for(backend),
            stateful_step_count=30,
            deadline=None,
            database=None,
            derandomize=not hunting,
            print_blob=True,
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        ),
    )


# --- the races found so far, replayed call by call on every backend ---------------------------

Action = Callable[[StoreModel], None]


def act(name: str, slot: int, *args: Any) -> Action:
    """One of the model's actions (begin, end, compact, reset, step, run, kill) on writer *slot*."""
    return lambda machine: getattr(machine, name)(slot, *args)


def until(slot: int, method: str, target: str) -> Action:
    """Step writer *slot* until its next call is *method* on *target* (a path, with P for the progress file)."""

    def stepping(machine: StoreModel) -> None:
        writer = machine.writers[slot]
        for _ in range(MAX_FINISH_CALLS):
            assert writer.op is not None, f"{writer.name} ended without calling {method}({target})"
            assert writer.op.task is not None
            waiting = machine.scheduler.waiting(writer.op.task) or ""
            name, _, args = waiting.partition("(")
            if name == method and args.rstrip(")").split(", ")[0] == target:
                return
            machine.step(slot)

    return stepping


def replay(uri: str, *actions: Action) -> None:
    """Play *actions* on a fresh model, checking the store after each, then finish everything."""
    machine = StoreModel(_example_uri(uri))
    try:
        for action in (*actions, StoreModel.finish_all):
            action(machine)
            machine.store_matches_model()
    finally:
        machine.teardown()


def completed(slot: int, eval_name: str, number: int = 1) -> list[Action]:
    """Start attempt *number* of *eval_name* on writer *slot* and record it completed."""
    start = act("begin", slot, f"start {eval_name} {number}")
    return [start, act("run", slot), act("end", slot, Outcome.COMPLETED), act("run", slot)]


def test_two_writers_never_start_the_same_attempt_number(progress_uri: str) -> None:
    """A second start() of attempt 1 of an eval, by another writer, is refused."""
    replay(progress_uri, act("begin", 0, "start a 1"), act("run", 0), act("begin", 1, "start a 1"), act("run", 1))


def test_a_compactor_that_outlives_a_reset_resurrects_nothing(progress_uri: str) -> None:
    """A compaction that gathered before a reset and writes its snapshot after it brings nothing back."""
    replay(
        progress_uri,
        *completed(0, "a"),
        act("compact", 0),
        until(0, "replace", "P.d/snapshot.json"),
        act("reset", 1),
        act("run", 1),
    )


def test_a_progress_file_written_after_a_reset_is_not_imported(progress_uri: str) -> None:
    """A compactor that rewrites P after a reset deleted it does not make old completions count."""
    replay(
        progress_uri,
        *completed(0, "a"),
        act("compact", 0),
        until(0, "replace", "P.d/snapshot.json"),
        act("step", 0),
        act("reset", 1),
        act("run", 1),
    )


def test_racing_compactors_never_move_p_backwards(progress_uri: str) -> None:
    """A slow compactor does not overwrite a newer compactor's P with its older state."""
    replay(
        progress_uri,
        *completed(0, "a"),
        act("compact", 0),
        until(0, "replace", "P.d/snapshot.json"),
        act("step", 0),
        *completed(1, "b"),
        act("compact", 1),
        act("run", 1),
        act("run", 0),
    )


def test_a_reset_killed_before_its_last_delete_leaves_no_false_progress_file(progress_uri: str) -> None:
    """A reset that dies midway leaves no progress file naming evals the store no longer shows done."""
    replay(
        progress_uri,
        *completed(0, "a"),
        act("compact", 0),
        act("run", 0),
        act("reset", 1),
        until(1, "delete", "['P']"),
        act("kill", 1),
    )
