"""The model behind tests/test_store_model.py: what the progress store must hold, given which
operations began and ended (acknowledged) in which order, with resets and kills among them.

Time is a counter (`tick`) advanced at every event. The rules, from the store's promises:

- An acknowledged record (start/record returned) is *strong* while no reset touched it: it must be
  in every load that began after its acknowledgement. A reset that begins weakens every record
  there is, and a record whose operation overlapped a reset is weak from the start.
- A reset that completed *settles* once every operation in flight during it has ended; from then
  on, records whose operation ended before the reset began are *erased*: no later load may show them.
- A record a load shows must be one that was written, byte for byte; the only records allowed
  with an unknown attempt id are starts of failed or killed start() calls (their id never
  reached the caller).
- Between resets, a successful start() claims its (eval, number): a second success is a duplicate,
  and AttemptTakenError needs some other start() of that number that may hold the claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import note as hypothesis_note
from hypothesis.control import currently_in_test_context
from stepping import Task

from batchrun._state import Attempt, Outcome
from batchrun.progress import ProgressStore

_RANK = {None: 0, Outcome.INTERRUPTED: 1, Outcome.FAILED: 2, Outcome.COMPLETED: 3}


def note(text: str) -> None:
    """Say what happened: in the failing example Hypothesis prints, or on stdout in a replay."""
    if currently_in_test_context():
        hypothesis_note(text)
    else:
        print(text)


class LostRecord(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """An acknowledged record is missing from a later load, with no reset since."""


class FalseRecord(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """A load shows a record that no writer wrote."""


class Resurrected(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """A record erased by a settled reset is back."""


class DuplicateAttempt(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """Two start() calls succeeded for the same eval and attempt number."""


class SpuriousTaken(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """AttemptTakenError although no other start() may hold that number's claim."""


@dataclass(eq=False)
class Op:
    """One operation of one writer, from its beginning to its end."""

    writer: str
    kind: str
    began: int
    key: tuple[str, int] | None = None  # start: (eval, number)
    record: Attempt | None = None  # record: the end it writes
    overlapped: bool = False  # a reset was in flight at some time while this ran
    killed: bool = False
    claims: bool = False  # the process claims the run first
    seen: list[Attempt] = field(default_factory=list)  # start's attempt, then the end recorded
    ended: int | None = None
    erased: int | None = None  # a failed start whose record a settled reset erased
    claim_erased: int | None = None  # a start whose claim a settled reset erased
    task: Task | None = field(default=None, repr=False)

    def __str__(self) -> str:
        if self.key is not None:
            return f"{self.kind}{self.key}"
        if self.record is not None:
            return f"record({self.record.eval}#{self.record.number} {self.record.id} {self.record.outcome})"
        return f"{self.kind}()"


@dataclass(eq=False)
class Writer:
    """A writer slot's current process: its store instance and the attempts it has not ended."""

    name: str
    store: ProgressStore
    unfinished: list[Attempt] = field(default_factory=list)
    op: Op | None = None
    claimed: bool = False  # stored or checked the run's identity, as `run` does first
    born: int | None = None  # resets begun when its claim ended (None: the claim overlapped a reset)


@dataclass(eq=False)
class _Record:
    value: Attempt
    op: Op
    acked: int | None = None
    strong: bool = False
    erased: int | None = None


@dataclass(eq=False)
class _Watch:
    """A reset and the operations in flight while it ran; settles when all have ended."""

    reset: Op
    during: set[Op]
    completed: bool = False


class Model:
    """Bookkeeping of operations and the checks of what a load may and must show."""

    def __init__(self, skipped: frozenset[str]) -> None:
        self.skipped = skipped
        self.tick = 0
        self.running: set[Op] = set()
        self.records: dict[tuple[str, Outcome | None], _Record] = {}
        self.blind: list[Op] = []  # failed starts: a record may exist whose id we never learnt
        self.claims: dict[tuple[str, int], Op] = {}  # strong successful starts
        self.claimers: dict[tuple[str, int], list[Op]] = {}  # starts whose claim may exist
        self.watches: list[_Watch] = []
        self.resets_begun = 0

    def now(self) -> int:
        self.tick += 1
        return self.tick

    def fail(self, kind: type[AssertionError], msg: str) -> None:
        """Raise *kind*, unless BATCHRUN_MODEL_SKIP names it (then only note it)."""
        if kind.__name__ in self.skipped:
            note(f"(skipped {kind.__name__}: {msg})")
            return
        raise kind(msg)

    def resets_unsettled(self) -> bool:
        return bool(self.watches)

    def begin(
        self,
        writer: Writer,
        kind: str,
        key: tuple[str, int] | None = None,
        record: Attempt | None = None,
        seen: list[Attempt] | None = None,
    ) -> Op:
        op = Op(writer.name, kind, self.now(), key=key, record=record, seen=[] if seen is None else seen)
        resetting = [w for w in self.watches if w.reset in self.running]
        op.overlapped = bool(resetting)
        for watch in resetting:
            watch.during.add(op)
        if kind == "reset":
            self.resets_begun += 1
            op.overlapped = True
            for other in self.running:
                other.overlapped = True
            for rec in self.records.values():
                rec.strong = False
            self.claims.clear()
            self.watches.append(_Watch(op, {*self.running, op}))
        self.running.add(op)
        if record is not None:
            self.records[record.id, record.outcome] = _Record(record, op)
        if key is not None:
            self.claimers.setdefault(key, []).append(op)
        return op

    def stale(self, writer: Writer) -> bool:
        """Whether the writer's run was reset since it claimed it (or it never claimed one): what
        it writes from then on belongs to a run that no longer counts, so nothing of it must last.
        """
        return writer.born is None or writer.born != self.resets_begun

    def learn(self, op: Op, *, stale: bool) -> None:
        """Take in what *op* told its caller so far (``op.seen``: the attempt its start() returned,
        then the end it records): a start that returned is acknowledged, an end is written.
        """
        if op.seen and (op.seen[0].id, None) not in self.records:
            self.records[op.seen[0].id, None] = _Record(op.seen[0], op)
            self._ack(op.seen[0], op, stale=stale, tick=self.now())
            self._claimed(op, stale=stale)
        for value in op.seen[1:]:
            self.records.setdefault((value.id, value.outcome), _Record(value, op))

    def _claimed(self, op: Op, *, stale: bool) -> None:
        assert op.key is not None
        prior = self.claims.get(op.key)
        if prior is not None and not stale:
            self.fail(DuplicateAttempt, f"{op.writer} and {prior.writer} both started attempt {op.key}")
        if not op.overlapped and not stale:
            self.claims[op.key] = op

    def end(self, op: Op, error: BaseException | None, result: object, *, stale: bool) -> None:
        op.ended = self.now()
        self.running.discard(op)
        if error is None and op.kind == "start" and isinstance(result, Attempt):
            op.seen = [result]
        self.learn(op, stale=stale)
        if op.key is not None and not op.seen:
            self.blind.append(op)  # its start may be stored, under an id we never learnt
        if error is None and op.record is not None:
            self._ack(op.record, op, stale=stale)
        if error is None and op.kind == "complete":
            self._ack(op.seen[-1], op, stale=stale)
        for watch in list(self.watches):
            if watch.reset is op:
                watch.completed = error is None
            watch.during.discard(op)
            if not watch.during:
                self.watches.remove(watch)
                if watch.completed:
                    self._erase_before(watch.reset.began)

    def _ack(self, value: Attempt, op: Op, *, stale: bool, tick: int | None = None) -> None:
        rec = self.records[value.id, value.outcome]
        rec.acked, rec.strong = tick or op.ended, not op.overlapped and not stale

    def _erase_before(self, began: int) -> None:
        tick = self.now()
        note(f"the reset that began at tick {began} settled: older records are erased")
        for rec in self.records.values():
            if rec.erased is None and rec.op.ended is not None and rec.op.ended < began:
                rec.erased = tick
        for op in self.blind:
            if op.erased is None and op.ended is not None and op.ended < began:
                op.erased = tick
        for ops in self.claimers.values():
            for o in ops:
                if o.ended is not None and o.ended < began and o.claim_erased is None:
                    o.claim_erased = tick  # its claim is gone from now on

    def check_taken(self, op: Op) -> None:
        """AttemptTakenError for *op*: some other start of the number must possibly hold it."""
        assert op.key is not None
        # A claim that a reset erased still explains a refusal by a start that began before then.
        live = [o for o in self.claimers.get(op.key, []) if o.claim_erased is None or o.claim_erased > op.began]
        if not [o for o in live if o is not op]:
            self.fail(SpuriousTaken, f"{op.writer}'s start{op.key} was refused, but no other start claimed it")

    def check_state(self, state: object, began: int, who: str, *, full: bool = True) -> None:
        """What a load (or compaction) that began at tick *began* returned; a stale writer's view
        (not *full*) is only checked for records that nobody wrote.
        """
        attempts: list[Attempt] = state.all_attempts()  # type: ignore[attr-defined]
        unknown: dict[str, list[Attempt]] = {}
        best: dict[str, int] = {}
        for attempt in attempts:
            rec = self.records.get((attempt.id, attempt.outcome))
            if rec is None:
                unknown.setdefault(attempt.eval, []).append(attempt)
                continue
            if rec.value != attempt:
                self.fail(FalseRecord, f"{who} shows {attempt}, but {rec.op.writer} wrote {rec.value}")
            if full and rec.erased is not None and rec.erased < began:
                self.fail(Resurrected, f"{who} shows {attempt} ({rec.op.writer}'s {rec.op}), erased by a reset")
            best[attempt.id] = _RANK[attempt.outcome]
        for name, extra in unknown.items():
            blind = [
                op for op in self.blind if op.key and op.key[0] == name and (not full or (op.erased or began) >= began)
            ]
            if any(a.outcome is not None for a in extra) or len(extra) > len(blind):
                self.fail(FalseRecord, f"{who} shows records no writer made: {extra}")
        for rec in self.records.values():
            lost = full and rec.strong and rec.acked is not None and rec.acked < began
            if lost and best.get(rec.value.id, -1) < _RANK[rec.value.outcome]:
                self.fail(LostRecord, f"{who} lacks {rec.value} ({rec.op.writer}'s {rec.op}, acknowledged)")
