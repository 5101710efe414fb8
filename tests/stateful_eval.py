"""A fake eval that resumes from its state folder, as inspect-ai does from its log folder.

Usage: stateful_eval.py STATE EVAL --journal FILE [--steps N] [--sleep S] [--fail-always]

It runs steps 1..N, skipping those its state folder (STATE, else $BATCHRUN_STATE) records as done:
each step sleeps S seconds, journals "step EVAL N", and is recorded in STATE/steps/N (one file per
step, as a tool writes its parts) and STATE/manifest.json (rewritten after each step). On SIGINT it
journals "stopped EVAL" and exits 0 (as inspect does after saving a partial log); at the end it
writes STATE/metrics.json and journals "done EVAL". --fail-always exits 3 after the first step.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("state")
parser.add_argument("eval")
parser.add_argument("--journal", required=True)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail-always", action="store_true")
args = parser.parse_args()
state = Path(args.state or os.environ["BATCHRUN_STATE"])


def journal(*words: object) -> None:
    with Path(args.journal).open("a", encoding="utf-8") as out:
        out.write(" ".join(str(w) for w in words) + "\n")


def stop(_signum: int, _frame: object) -> None:
    journal("stopped", args.eval)
    sys.exit(0)


signal.signal(signal.SIGINT, stop)
journal("start", args.eval, os.getpid(), sorted(p.name for p in state.iterdir()) if state.is_dir() else "no-folder")
manifest = state / "manifest.json"
done = set(json.loads(manifest.read_text())) if manifest.exists() else set()
steps = state / "steps"
steps.mkdir(parents=True, exist_ok=True)
for step in range(1, args.steps + 1):
    if step in done and (steps / str(step)).read_text() == f"result of step {step}":
        continue
    time.sleep(args.sleep)
    journal("step", args.eval, step)
    (steps / str(step)).write_text(f"result of step {step}")
    done.add(step)
    tmp = state / ".manifest.tmp"
    tmp.write_text(json.dumps(sorted(done)))
    tmp.replace(manifest)
    if args.fail_always:
        sys.exit(3)
(state / "metrics.json").write_text(json.dumps({"accuracy": len(done) / args.steps, "steps": len(done)}))
journal("done", args.eval)
