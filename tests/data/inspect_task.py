"""An inspect-ai task that runs offline with `--model mockllm/model` and says which samples ran.

`counting` has `samples` samples (task arg, default 30). Each sample's solver appends its id as one
line to the file named by `INSPECT_JOURNAL` (when set) as it starts, sleeps `delay` seconds (task
arg, default 0), appends `done ID` once that wait is over, and asks mockllm, which always answers
`MockLLM.default_output`. Every third sample (ids 3, 6, ...) expects another answer, so accuracy is
known: 20/30 = 0.667 for 30 samples, 4/5 = 0.8 for 5.

    inspect eval tests/data/inspect_task.py --model mockllm/model -T samples=5 -T delay=0.2
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model._providers.mockllm import MockLLM
from inspect_ai.scorer import match
from inspect_ai.solver import Generate, Solver, TaskState, generate, solver


async def _count_words(_self: MockLLM, text: str) -> int:
    return max(1, len(text.split()))


# mockllm inherits `ModelAPI.count_text_tokens` (inspect_ai/model/_model.py), which counts with
# tiktoken's o200k_base: tiktoken downloads that tokenizer on first use (or is not installed at all).
# A word count is enough for a mock, and keeps the task offline.
MockLLM.count_text_tokens = _count_words  # type: ignore[method-assign]  # ty: ignore


@solver
def journal(delay: float) -> Solver:
    """Note the sample in $INSPECT_JOURNAL as it starts, wait `delay` seconds, note it done."""

    def note(line: str) -> None:
        path = os.environ.get("INSPECT_JOURNAL")
        if path:
            with Path(path).open("a", encoding="utf-8") as out:
                out.write(f"{line}\n")

    async def solve(state: TaskState, _generate: Generate) -> TaskState:
        note(f"{state.sample_id}")
        await asyncio.sleep(delay)
        note(f"done {state.sample_id}")
        return state

    return solve


@task
def counting(samples: int = 30, delay: float = 0.0) -> Task:
    """`samples` questions; all but every third are answered right by mockllm."""
    dataset = [
        Sample(
            id=i,
            input=f"Question {i}",
            target="wrong on purpose" if i % 3 == 0 else MockLLM.default_output,
        )
        for i in range(1, int(samples) + 1)
    ]
    return Task(dataset=dataset, solver=[journal(float(delay)), generate()], scorer=match(location="exact"))
