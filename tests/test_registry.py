"""Set names looked up in a registry folder laid out like openai/evals' own, without the `evals` package
(about 4 GB with torch; CI does not install it).

tests/data/openai-evals-registry is written for these tests in the shape of openai/evals' evals/registry
(read, not copied): eval_sets/{test-basic,coqa-ex,mmmu}.yaml with the real sets' entries, and evals/*.yaml
with aliases whose `id` names the full key, full keys ending `.s1.simple-v0` or `.dev.v0`, and mmmu's
`.dev.v1` twins that its pattern `mmmu-*.validation.v1` must not match. The expected keys are what
oaievalset resolves there (its Registry: a set's entries are patterns matched against the eval names, `*`
any text; an alias's `id` leads to the full key).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import EvalSetError
from batchrun.evalset import load_eval_set

REGISTRY = Path(__file__).parent / "data" / "openai-evals-registry"

RESOLVED = {
    "test-basic": [
        "test-match.s1.simple-v0",
        "test-fuzzy-match.s1.simple-v0",
        "test-includes.s1.simple-v0",
        "test-includes-ignore-case.s1.simple-v0",
    ],
    "coqa-ex": [
        "coqa-match.dev.v0",
        "coqa-fact.dev.v0",
        "coqa-closedqa-correct.dev.v0",
        "coqa-closedqa-relevance.dev.v0",
        "coqa-closedqa-conciseness.dev.v0",
    ],
    # The set holds the pattern `mmmu-*.validation.v1`: the .dev.v1 twins are not part of it.
    "mmmu": [
        "mmmu-accounting.validation.v1",
        "mmmu-agriculture.validation.v1",
        "mmmu-architecture-and-engineering.validation.v1",
    ],
}


def test_registry_folder_holds_the_sets_found_by_name() -> None:
    """Each set of the openai/evals-shaped registry is found by name below --registry-path."""
    for name in RESOLVED:
        loaded = load_eval_set(name, [str(REGISTRY)])
        assert loaded.name == name
        assert loaded.evals


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_registry_folder_resolves_sets_to_the_keys_oaievalset_runs(name: str) -> None:
    """A set found below --registry-path resolves, as oaievalset does, to full eval keys such as
    `coqa-match.dev.v0`: aliases followed through `id`, patterns like `mmmu-*.validation.v1` expanded.
    """
    loaded = load_eval_set(name, [str(REGISTRY)])
    assert sorted(loaded.evals) == sorted(RESOLVED[name])


def test_a_pattern_that_matches_no_eval_is_bad_input(tmp_path: Path) -> None:
    """A set entry with `*` that matches no eval of the registry is refused, not run as a literal name."""
    (tmp_path / "eval_sets").mkdir()
    (tmp_path / "evals").mkdir()
    (tmp_path / "eval_sets" / "s.yaml").write_text("s:\n  evals: [nothing-*]\n")
    (tmp_path / "evals" / "e.yaml").write_text("e:\n  id: e.dev.v0\ne.dev.v0:\n  class: x:Y\n")
    with pytest.raises(EvalSetError, match="matches no eval"):
        load_eval_set("s", [str(tmp_path)])
