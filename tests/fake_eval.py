"""A fake eval for tests: journals its start and end, sleeps, and fails when told to.

Usage: fake_eval.py EVAL ATTEMPT --journal FILE [--sleep S] [--fail NAME]... [--fail-until NAME:N]...
Exit 3 for a NAME given to --fail; for --fail-until, exit 4 while ATTEMPT < N.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("eval")
parser.add_argument("attempt", type=int)
parser.add_argument("--journal", required=True)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail", action="append", default=[])
parser.add_argument("--fail-until", action="append", default=[])
args = parser.parse_args()


def journal(*words: object) -> None:
    line = " ".join(str(w) for w in words) + "\n"
    fd = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


journal("start", args.eval, args.attempt, os.getpid())
print(f"fake eval {args.eval} attempt {args.attempt} env={os.environ.get('BATCHRUN_EVAL')}", flush=True)
print(f"to stderr: {args.eval}", file=sys.stderr, flush=True)
time.sleep(args.sleep)
code = 0
if args.eval in args.fail:
    code = 3
for rule in args.fail_until:
    name, _, until = rule.rpartition(":")
    if name == args.eval and args.attempt < int(until):
        code = 4
journal("end", args.eval, code)
sys.exit(code)
