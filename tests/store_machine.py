"""The state machine of the model-based store test (tests/test_store_model.py): writer slots whose
operations run in threads against gated backends (tests/stepping.py), Hypothesis rules to begin,
step, run and kill them, and the checks of the store between any two calls (tests/progress_model.py
keeps the bookkeeping). Each rule exists once per writer slot (begin_w0, step_w1, ...).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

from helpers import open_store
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from progress_model import Model, Op, Writer, note
from stepping import Killed, Scheduler, Stuck

from batchrun import RunIdentity
from batchrun._state import Attempt, EvalState, Outcome, RunState
from batchrun.errors import AttemptTakenError, StoreError
from batchrun.progress import ProgressStore

WRITERS = int(os.environ.get("BATCHRUN_MODEL_WRITERS", "2"))  # two find the races sooner than three
EVALS = ("a", "b")
IDENTITY = RunIdentity(model="m", eval_set="s", command="eval {eval}", extra_args=(), evals=EVALS)
SETTLE_TIMEOUT_S = float(os.environ.get("BATCHRUN_MODEL_TIMEOUT", "30"))
MAX_FINISH_CALLS = 2000
MAX_KILLS = 2  # per example, and as many resets: each ends what came before, so few go far
READ_ONLY = frozenset({"read", "tag", "listdir"})  # backend calls after which the store is unchanged


class Crash(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """An operation raised something other than StoreError."""


class PBackwards(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """The progress file lost a name between two observations with no reset about."""


class FalseP(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """The progress file names an eval that the store does not show done."""


class StaleP(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """After quiescence and a final compaction, the progress file differs from the done evals."""


class Unloadable(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """Another instance cannot load the store."""


def _skipped() -> frozenset[str]:
    return frozenset(filter(None, os.environ.get("BATCHRUN_MODEL_SKIP", "").split(",")))


def p_names(store: ProgressStore) -> set[str]:
    """The eval names in the progress file P (empty if there is none)."""
    blob = store.backend.read(store.location.path)
    return set() if blob is None else {line for line in blob.data.decode().splitlines() if line}


def done(state: RunState) -> set[str]:
    return {name for name in EVALS if state.state(name) is EvalState.DONE}


class StoreModel(RuleBasedStateMachine):
    """Writers' operations, interleaved call by call, checked against :class:`model.Model`."""

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri
        self.scheduler = Scheduler(SETTLE_TIMEOUT_S)
        self.model = Model(_skipped())
        self.generations = [0] * WRITERS
        self.stores: list[ProgressStore] = []
        self.writers = [self._new_writer(slot) for slot in range(WRITERS)]
        self.audit_store = open_store(uri)  # its backend serves a fresh instance per observation
        self.p_seen: set[str] | None = set()  # P's names at the last observation ...
        self.p_seen_since = 0  # ... and how many resets had begun then
        self.changed = False  # a backend call ran since the last observation
        self.kills = self.resets = 0

    def auditor(self) -> ProgressStore:
        """A fresh instance, as a new process would open it (sharing a connection: S3 clients are slow to make)."""
        return ProgressStore(self.audit_store.location, self.audit_store.backend)

    def _new_writer(self, slot: int) -> Writer:
        self.generations[slot] += 1
        name = f"w{slot}" if self.generations[slot] == 1 else f"w{slot}#{self.generations[slot]}"
        store = open_store(self.uri)
        self.stores.append(store)
        path = store.location.path

        def describe(method: str, args: tuple[object, ...]) -> str:
            shown = ", ".join(str(a).replace(path, "P") for a in args if isinstance(a, (str, list)))
            return f"{method}({shown})"

        store.backend = self.scheduler.gate(store.backend, describe)  # type: ignore[assignment]
        return Writer(name, store)

    # --- the actions; rules for each writer slot are made from them below the class ----------

    def _begin(self, writer: Writer, kind: str, action: Callable[[], object], **details: Any) -> None:
        claims = kind in ("start", "complete", "record", "compact") and not writer.claimed
        op = self.model.begin(writer, kind, **details)
        op.claims = claims
        note(f"{writer.name} begins {op}{' (claiming the run first)' if claims else ''}")

        def run() -> object:
            if claims:  # as `run` does once, before anything else
                writer.store.claim(IDENTITY)
            return action()

        op.task = self.scheduler.launch(writer.store.backend, f"{writer.name}.{kind}", run)  # type: ignore[arg-type]
        writer.op = op
        self._after_progress(writer)

    def begin(self, slot: int, op: str) -> None:
        """Begin *op* on an idle writer ("start EVAL N", "complete EVAL N": start and record it completed,
        "compact" or "load"); a process that has not
        claimed the run (stored or checked its identity) does that first, as `run` does.
        """
        writer = self.writers[slot]
        kind, *attempt = op.split()
        if kind == "start":
            eval_name, number = attempt[0], int(attempt[1])
            self._begin(writer, "start", lambda: writer.store.start(eval_name, number), key=(eval_name, number))
        elif kind == "complete":
            self._complete(writer, attempt[0], int(attempt[1]))
        else:
            self._begin(writer, kind, getattr(writer.store, kind))

    def _complete(self, writer: Writer, eval_name: str, number: int) -> None:
        """Start an attempt and record it completed, in one operation (an eval that succeeds)."""
        seen: list[Attempt] = []

        def complete() -> Attempt:
            attempt = writer.store.start(eval_name, number)
            seen.append(attempt)
            seen.append(attempt.finished(Outcome.COMPLETED, exit_code=0))
            writer.store.record(seen[-1])
            return seen[-1]

        self._begin(writer, "complete", complete, key=(eval_name, number), seen=seen)

    def end(self, slot: int, outcome: Outcome) -> None:
        """Record the end of the writer's newest unended attempt."""
        writer = self.writers[slot]
        end = writer.unfinished.pop().finished(outcome, exit_code=0 if outcome is Outcome.COMPLETED else 1)
        self._begin(writer, "record", lambda: writer.store.record(end), record=end)

    def compact(self, slot: int) -> None:
        """Fold the events into the snapshot and rewrite P."""
        self.begin(slot, "compact")

    def reset(self, slot: int) -> None:
        """Delete the run's progress; this process then starts a new run (it claims again)."""
        self.resets += 1
        self._begin(self.writers[slot], "reset", self.writers[slot].store.reset)

    def step(self, slot: int) -> None:
        """Let the writer's next backend call run."""
        self._step(self.writers[slot])

    def run(self, slot: int) -> None:
        """Let the writer's operation run to its end, alone."""
        for _ in range(MAX_FINISH_CALLS):
            if not self._step(self.writers[slot]):
                return
        self.model.fail(Stuck, f"{self.writers[slot].name} still running after {MAX_FINISH_CALLS} calls")

    def _step(self, writer: Writer) -> bool:
        op = writer.op
        assert op is not None
        assert op.task is not None
        text = self.scheduler.step(op.task)
        self.changed = self.changed or text.partition("(")[0] not in READ_ONLY
        note(f"  {writer.name}.{op.kind}: {text}")
        return self._after_progress(writer)

    def _after_progress(self, writer: Writer) -> bool:
        """Collect the writer's operation if it ended; whether it is still running."""
        op = writer.op
        assert op is not None
        assert op.task is not None
        # A process that claims the run in this very operation is as fresh as its claim.
        self.model.learn(op, stale=op.overlapped if op.claims else self.model.stale(writer))
        if not op.task.done:
            return True
        writer.op = None
        self._ended(writer, op)
        return False

    def _ended(self, writer: Writer, op: Op) -> None:
        task = op.task
        assert task is not None
        error = task.error or (Killed() if op.killed else None)  # a dead process acknowledges nothing
        note(f"{writer.name} {op.kind} -> {'ok' if error is None else type(error).__name__}")
        if op.claims:  # after a failure, claim again: harmless if the claim went through
            writer.claimed, writer.born = error is None, None if op.overlapped else self.model.resets_begun
        stale = self.model.stale(writer)
        self.model.end(op, error, task.result, stale=stale)
        if error is None:
            if op.kind == "start":
                writer.unfinished.append(task.result)
            elif op.kind == "reset":  # like `run --fresh`: what follows is a new run, claimed anew
                writer.claimed, writer.born, writer.unfinished = False, None, []
            elif op.kind in ("load", "compact"):
                self.model.check_state(task.result, op.began, f"{writer.name}.{op.kind}", full=not stale)
        elif op.killed and isinstance(error, Killed):
            pass
        elif isinstance(error, AttemptTakenError) and op.kind == "start":
            self.model.check_taken(op)
        elif not isinstance(error, StoreError):
            trace = "".join(traceback.format_exception(error))
            msg = f"{writer.name}.{op.kind} raised {type(error).__name__}, not a StoreError:\n{trace}"
            self.model.fail(Crash, msg)

    def kill(self, slot: int) -> None:
        """The writer's process dies before its next backend call; a new process takes the slot."""
        writer = self.writers[slot]
        op = writer.op
        assert op is not None
        assert op.task is not None
        note(f"{writer.name} killed before {self.scheduler.waiting(op.task)}")
        op.killed = True
        self.kills += 1
        self.scheduler.kill(op.task)
        self.changed = True  # no call ran, but a reset may settle: the model changed
        self._after_progress(writer)
        self.writers[slot] = self._new_writer(slot)

    @rule()
    def finish_all(self) -> None:
        """Run every operation to its end, then compact with the auditor's instance and compare P."""
        for _ in range(MAX_FINISH_CALLS):
            running = [w for w in self.writers if w.op is not None]
            if not running:
                break
            for writer in running:
                self._step(writer)
        else:
            self.model.fail(StaleP, f"operations still running after {MAX_FINISH_CALLS} calls")
        try:
            state = self.auditor().compact()
        except StoreError as exc:
            self.model.fail(StaleP, f"final compaction with nothing else running failed: {exc}")
            return
        self.model.check_state(state, self.model.now(), "final compact")
        names, shown = p_names(self.audit_store), done(self.auditor().load())
        if names != shown:
            msg = f"after a final compaction P names {sorted(names)}, load() shows done {sorted(shown)}"
            self.model.fail(StaleP, msg)
        self.changed = True

    # --- observing the store between any two calls ----------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        """Another instance sees every acknowledged record, nothing false, and P never goes back."""
        if not self.changed:
            return
        self.changed = False
        try:
            state = self.auditor().load()
        except StoreError as exc:
            self.model.fail(Unloadable, f"another instance cannot load the store: {exc}")
            return
        self.model.check_state(state, self.model.now(), "the auditor's load")
        names = p_names(self.audit_store)
        if self.model.resets_unsettled():
            self.p_seen = None
            return
        since = self.model.resets_begun
        if self.p_seen is not None and self.p_seen_since == since and not self.p_seen <= names:
            self.model.fail(PBackwards, f"P went from {sorted(self.p_seen)} to {sorted(names)}")
        self.p_seen, self.p_seen_since = names, since
        if not names <= done(state):
            self.model.fail(FalseP, f"P names {sorted(names)} but only {sorted(done(state))} are done")

    def teardown(self) -> None:
        """Kill whatever still runs, and stop every thread the example started."""
        self.scheduler.close()
        for store in self.stores:  # stop each store's group-commit thread
            store.close()


def _slot_rules() -> None:
    """Give each writer slot its own rules (begin_w0, end_w1, step_w2, ...), enabled only
    when they apply, so a printed failing sequence names the writer of every step.
    """

    def idle(slot: int) -> Callable[[StoreModel], bool]:
        return lambda m: m.writers[slot].op is None

    def ending(slot: int) -> Callable[[StoreModel], bool]:
        return lambda m: idle(slot)(m) and bool(m.writers[slot].unfinished)

    def busy(slot: int) -> Callable[[StoreModel], bool]:
        return lambda m: m.writers[slot].op is not None

    def killable(slot: int) -> Callable[[StoreModel], bool]:
        return lambda m: busy(slot)(m) and m.kills < MAX_KILLS

    def resettable(slot: int) -> Callable[[StoreModel], bool]:
        return lambda m: idle(slot)(m) and m.resets < MAX_KILLS

    ops = [f"{verb} {name} {number}" for verb in ("start", "complete") for name in EVALS for number in (1, 2)]
    ops.append("load")
    actions: list[tuple[str, Callable[[int], Callable[[StoreModel], bool]], dict[str, Any]]] = [
        ("begin", idle, {"op": st.sampled_from(ops)}),
        ("end", ending, {"outcome": st.sampled_from(Outcome)}),
        ("compact", idle, {}),
        ("reset", resettable, {}),
        ("step", busy, {}),
        ("run", busy, {}),
        ("kill", killable, {}),
    ]
    for slot in range(WRITERS):
        for action, when, arguments in actions:
            method = getattr(StoreModel, action)

            def bound(self: StoreModel, _method: Any = method, _slot: int = slot, **kwargs: Any) -> None:
                _method(self, _slot, **kwargs)

            bound.__name__ = bound.__qualname__ = f"{action}_w{slot}"
            bound.__doc__ = method.__doc__
            setattr(StoreModel, bound.__name__, precondition(when(slot))(rule(**arguments)(bound)))


_slot_rules()
