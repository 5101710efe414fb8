"""The last writes of a run: the queued records, a last compaction and the worker's leave; during
a stop, bounded by :data:`FINAL_WRITE_S`, so the exit stays prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import structlog

from batchrun._ledger import Ledger
from batchrun.fleet import Fleet
from batchrun.progress import ProgressStore

FINAL_WRITE_S = 5.0  # during a stop: how long the last records and compaction may take

Log = structlog.typing.FilteringBoundLogger


def final_write(  # noqa: PLR0913 - the parts the last write touches
    store: ProgressStore, ledger: Ledger, fleet: Fleet, savers: Sequence[threading.Thread], log: Log, *, stopping: bool
) -> None:
    """Write what is left; *savers* are the threads saving logs of evals a stop ended."""
    if fleet.fenced is not None:
        return  # another process holds this worker's place: nothing more is ours to write
    if not stopping:
        store.flush()
        ledger.wait_for_acknowledgements(None)
        store.compact()
        fleet.leave()
        return
    finished = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            for saver in savers:
                saver.join()
            store.flush()
            store.compact()
            fleet.leave()  # after the records: whoever takes these evals next sees them
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)
        finally:
            finished.set()

    threading.Thread(target=work, name="batchrun-final-write", daemon=True).start()
    deadline = time.monotonic() + FINAL_WRITE_S
    # Not cut short by a second signal: the records of interrupted attempts are what keeps them
    # from counting as lost; the bound is what keeps the exit prompt.
    while not finished.wait(0.05) and time.monotonic() < deadline:
        pass
    if not finished.is_set() or failure:
        error = str(failure[0]) if failure else f"not done within {FINAL_WRITE_S:g} s"
        log.warning("run.progress_not_saved", error=error)
        return
    ledger.wait_for_acknowledgements(FINAL_WRITE_S)
