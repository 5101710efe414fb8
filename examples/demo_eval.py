"""A stand-in for an eval command (like `oaieval MODEL EVAL`), so the demo needs no eval framework.

Usage: python examples/demo_eval.py MODEL EVAL. Prints a few lines, takes a moment, exits 0.
"""

import random
import sys
import time

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
