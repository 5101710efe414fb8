"""The floor: the simplest correct runner a person would write, used as the benchmark baseline.

Usage:
  floor.py local NAMES_FILE DONE_FILE [--jobs N] -- CMD...   append each finished name, fsync
  floor.py s3 NAMES_FILE s3://BUCKET/PREFIX [--jobs N] -- CMD...  one small PUT per finished eval

CMD gets the eval name appended. Names already in DONE_FILE (or under PREFIX) are skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["local", "s3"])
    parser.add_argument("names")
    parser.add_argument("done")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    with open(args.names) as fh:
        names = [line.strip() for line in fh if line.strip()]
    record, done = local_recorder(args.done) if args.kind == "local" else s3_recorder(args.done)
    pending = [n for n in names if n not in done]

    def one(name: str) -> None:
        if subprocess.run([*command, name], check=False).returncode == 0:
            record(name)

    if args.jobs == 1:
        for name in pending:
            one(name)
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, pending))
    return 0


def local_recorder(path: str) -> tuple[Callable[[str], None], set[str]]:
    done: set[str] = set()
    if os.path.exists(path):
        with open(path) as fh:
            done = {line.strip() for line in fh}
    fh = open(path, "a")  # noqa: SIM115 - open for the life of the process
    lock = threading.Lock()

    def record(name: str) -> None:
        with lock:
            fh.write(name + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    return record, done


def s3_recorder(uri: str) -> tuple[Callable[[str], None], set[str]]:
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    done = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        done |= {obj["Key"].rsplit("/", 1)[1] for obj in page.get("Contents", [])}

    def record(name: str) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=b"")

    return record, done


if __name__ == "__main__":
    sys.exit(main())
