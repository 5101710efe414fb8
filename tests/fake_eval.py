"""A fake eval for tests: journals its start and end, sleeps, and fails when told to.

Usage: fake_eval.py EVAL ATTEMPT --journal FILE [--sleep S] [--fail NAME]... [--fail-until NAME:N]...
                    [--trap exit0|ignore] [--child] [--leak-pipe] [--print-cr N] [--say TEXT]...
Exit 3 for a NAME given to --fail; for --fail-until, exit 4 while ATTEMPT < N.
--trap journals SIGTERM/SIGINT and then exits 0 (as inspect-ai does after saving its log) or
ignores them. --child starts a grandchild that sleeps and journals its pid.
--leak-pipe starts one in a session of its own (out of the eval's process group) that keeps
stdout and stderr open for 60 s, and journals "leak EVAL PID". --print-cr N writes N bytes of
progress-bar updates separated by carriage returns, with no newline, to stdout. --say TEXT (repeatable) prints
TEXT on stdout and stderr. --kill-parent NAME makes eval NAME SIGKILL its parent (batchrun) after its
sleep, as an eval that gets its whole pod OOM-killed would.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("eval")
parser.add_argument("attempt", type=int)
parser.add_argument("--journal", required=True)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail", action="append", default=[])
parser.add_argument("--fail-until", action="append", default=[])
parser.add_argument("--trap", choices=["exit0", "ignore"])
parser.add_argument("--child", action="store_true")
parser.add_argument("--leak-pipe", action="store_true")
parser.add_argument("--print-cr", type=int, default=0)
parser.add_argument("--say", action="append", default=[])
parser.add_argument("--kill-parent", action="append", default=[])
args = parser.parse_args()


def journal(*words: object) -> None:
    line = " ".join(str(w) for w in words) + "\n"
    fd = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def on_signal(signum: int, _frame: object) -> None:
    journal("signal", args.eval, signal.Signals(signum).name)
    print(f"got {signal.Signals(signum).name}, saving partial results", flush=True)
    if args.trap == "exit0":
        journal("end", args.eval, 0)
        sys.exit(0)


if args.trap:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

journal("start", args.eval, args.attempt, os.getpid())
if args.child:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    journal("child", args.eval, grandchild.pid)
if args.leak_pipe:
    leaked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    journal("leak", args.eval, leaked.pid)
print(f"fake eval {args.eval} attempt {args.attempt} env={os.environ.get('BATCHRUN_EVAL')}", flush=True)
print(f"to stderr: {args.eval}", file=sys.stderr, flush=True)
if args.print_cr:
    update = b"".join(b"progress %6d%%\r" % n for n in range(1000))
    left = args.print_cr
    while left > 0:
        left -= sys.stdout.buffer.write(update[:left])
    sys.stdout.buffer.write(b"100%: done")  # the last update, still no newline
    sys.stdout.flush()
for text in args.say:
    print(text, flush=True)
    print(text, file=sys.stderr, flush=True)
deadline = time.monotonic() + args.sleep
while time.monotonic() < deadline:  # short sleeps, so signal handlers run promptly
    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
if args.eval in args.kill_parent:
    journal("killpod", args.eval, os.getppid())
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)  # the whole pod goes
code = 0
if args.eval in args.fail:
    code = 3
for rule in args.fail_until:
    name, _, until = rule.rpartition(":")
    if name == args.eval and args.attempt < int(until):
        code = 4
journal("end", args.eval, code)
sys.exit(code)
