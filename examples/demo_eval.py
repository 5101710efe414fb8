"""A stand-in for an eval command (like `oaieval MODEL EVAL`), so the demo needs no eval framework.

Usage: python examples/demo_eval.py MODEL EVAL. Prints a few lines, takes a moment, exits 0. With a
state folder (`batchrun run --state`, or `{state}` in the command), it writes its accuracy to
metrics.json there, which `batchrun report` shows.
"""

import json
import os
import random
import sys
import time
from pathlib import Path

SKILL = 0.7  # chance that the pretend model gets a sample right

model, eval_name = sys.argv[1], sys.argv[2]
rng = random.Random(f"{model}/{eval_name}")
samples = rng.randint(3, 6)
print(f"evaluating {model} on {eval_name}: {samples} samples", flush=True)
correct = 0
for i in range(samples):
    time.sleep(0.05)
    correct += rng.random() < SKILL
    print(f"  sample {i + 1}/{samples}", flush=True)
print(f"{eval_name}: accuracy {correct / samples:.2f}", flush=True)
state = os.environ.get("BATCHRUN_STATE")
if state:
    metrics = {"accuracy": round(correct / samples, 3), "samples": samples}
    Path(state, "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
