"""Backend calls one at a time, in the order a test chooses: the interleaving harness of the
model-based store test (tests/test_store_model.py).

Each writer's backend is wrapped in a :class:`Gate`; every call on it (from the operation's thread
or from the store's own recorder thread) waits until the :class:`Scheduler` grants it, and the
scheduler grants one call at a time and waits until the writer is *settled* again (blocked at its
next call, or its operation finished). So the calls of all writers run strictly one after another,
in an order the test decides, and a run is reproducible. A killed gate raises :class:`Killed` in
place of the call that was waiting and of every later one: the process died there.

Every wait has a timeout: an operation that neither reaches its next call nor ends raises
:class:`Stuck` in the test instead of hanging it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A call that waits longer than this for its grant belongs to a test that went away without
# tearing down; it raises rather than keep a thread alive for ever.
_ORPHAN_WAIT_S = 300.0


class Killed(BaseException):  # the process died here: an event the test causes, not an error
    """Raised in place of a backend call: the writer's process died just before making it."""


class Stuck(AssertionError):  # noqa: N818 - named for the broken property, as reported
    """An operation neither reached its next backend call nor finished within the timeout."""


@dataclass(eq=False)
class _Call:
    text: str
    granted: bool = False
    finished: bool = False


@dataclass(eq=False)
class Task:
    """One operation running in its own thread against one gated backend."""

    gate: Gate
    name: str
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class Gate:
    """A backend whose every call waits for the scheduler's grant; other attributes pass through."""

    def __init__(self, inner: Any, scheduler: Scheduler, describe: Callable[[str, tuple[Any, ...]], str]) -> None:
        self.inner = inner
        self.scheduler = scheduler
        self.describe = describe
        self.pending: list[_Call] = []
        self.dead = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name.startswith("_") or not callable(target):
            return target

        def gated(*args: Any, **kwargs: Any) -> Any:
            return self.scheduler.call(self, self.describe(name, args), target, args, kwargs)

        return gated


class Scheduler:
    """Runs operations in threads and lets their gated backend calls through one at a time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.cond = threading.Condition()
        self.gates: list[Gate] = []
        self.tasks: list[Task] = []

    def gate(self, inner: Any, describe: Callable[[str, tuple[Any, ...]], str]) -> Gate:
        """Wrap *inner* (a backend) so that its calls wait for grants."""
        gate = Gate(inner, self, describe)
        self.gates.append(gate)
        return gate

    def call(self, gate: Gate, text: str, target: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run in the caller's thread: wait for the grant, then make the call."""
        pending = _Call(text)
        with self.cond:
            if gate.dead:
                raise Killed
            gate.pending.append(pending)
            self.cond.notify_all()
            self.cond.wait_for(lambda: pending.granted or gate.dead, timeout=_ORPHAN_WAIT_S)
            gate.pending.remove(pending)
            if not pending.granted:
                raise Killed
        try:
            return target(*args, **kwargs)
        finally:
            with self.cond:
                pending.finished = True
                self.cond.notify_all()

    def launch(self, gate: Gate, name: str, operation: Callable[[], Any]) -> Task:
        """Start *operation* in a thread and return once it waits at its first call or ended."""
        task = Task(gate, name)

        def body() -> None:
            try:
                task.result = operation()
            except BaseException as exc:  # noqa: BLE001 - the test judges every outcome
                task.error = exc
            finally:
                with self.cond:
                    task.done = True
                    self.cond.notify_all()

        task.thread = threading.Thread(target=body, name=f"model-{name}", daemon=True)
        self.tasks.append(task)
        task.thread.start()
        self._settle(task, None)
        return task

    def waiting(self, task: Task) -> str | None:
        """The call *task*'s writer waits to make, or None if the task ended."""
        with self.cond:
            return None if task.done or not task.gate.pending else task.gate.pending[0].text

    def step(self, task: Task) -> str:
        """Let the oldest waiting call of *task*'s writer run; return it once the writer settled."""
        with self.cond:
            call = task.gate.pending[0]
            call.granted = True
            self.cond.notify_all()
        self._settle(task, call)
        return call.text

    def kill(self, task: Task) -> None:
        """Kill *task*'s writer before its waiting call; return once the task ended."""
        with self.cond:
            task.gate.dead = True
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: task.done, timeout=self.timeout):
                msg = f"{task.name} did not end within {self.timeout} s of its writer's death"
                raise Stuck(msg)
        self._join(task)

    def close(self) -> None:
        """Kill every writer and wait (bounded) for every thread started here."""
        with self.cond:
            for gate in self.gates:
                gate.dead = True
            self.cond.notify_all()
        for task in self.tasks:
            self._join(task)

    def _settle(self, task: Task, call: _Call | None) -> None:
        def settled() -> bool:
            return (call is None or call.finished) and (task.done or bool(task.gate.pending))

        with self.cond:
            if not self.cond.wait_for(settled, timeout=self.timeout):
                after = "its first call" if call is None else call.text
                msg = f"{task.name}: no next backend call and no end within {self.timeout} s after {after}"
                raise Stuck(msg)
        if task.done:
            self._join(task)

    def _join(self, task: Task) -> None:
        if task.thread is not None:
            task.thread.join(self.timeout)
