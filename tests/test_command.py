"""The --command template."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import batchrun

from batchrun import CommandTemplate, CommandTemplateError, EvalSetError


def test_each_word_is_formatted_on_its_own() -> None:
    """Placeholders fill words; quoting groups words; extra args are appended as they are."""
    template = CommandTemplate.parse("run '{model} x' --eval={eval} {eval_set}/{attempt}", ("--n", "{eval}"))
    argv = template.render(model="gpt 4", eval_name="a b;c", eval_set="s", attempt=2)
    assert argv == ["run", "gpt 4 x", "--eval=a b;c", "s/2", "--n", "{eval}"]


def test_literal_braces_are_written_doubled() -> None:
    """{{ and }} stand for literal braces."""
    assert CommandTemplate.parse("x {{json}}").render(model="m", eval_name="e", eval_set="s", attempt=1) == [
        "x",
        "{json}",
    ]


@pytest.mark.parametrize(
    "text",
    [
        *("x {evl}", "x {0}", "x {}", "x {eval.__class__}", "x {", "x 'open", ""),
        *("x {model:d}", "x {attempt:s}", "x {eval!x}", "x {model:{eval}}", "x {model:>99999}"),
    ],
)
def test_bad_templates_are_usage_errors(text: str) -> None:
    """Unknown placeholders, attribute access, bad braces or quotes, empty commands, and format specs
    or conversions that would fail (or allocate gigabytes) at render time are refused when parsed.
    """
    with pytest.raises(CommandTemplateError):
        CommandTemplate.parse(text)


def test_format_specs_and_conversions_that_work_are_kept() -> None:
    """Specs that fit the value's type and the !s/!r/!a conversions are allowed and rendered."""
    template = CommandTemplate.parse("x {attempt:03d} {eval!r} {model:>4}")
    assert template.render(model="m", eval_name="e", eval_set="s", attempt=7) == ["x", "007", "'e'", "   m"]


@pytest.mark.parametrize("text", ["prog {eval}", "prog {model} {eval} --", "prog {eval:>3}", "{eval}"])
def test_eval_names_starting_with_a_dash_are_refused_where_they_would_be_options(text: str) -> None:
    """An eval name starting with '-' is refused when a word before any -- starts with {eval}."""
    with pytest.raises(EvalSetError, match="starts with '-'"):
        CommandTemplate.parse(text).check_eval_names(["a", "-x"])


@pytest.mark.parametrize("text", ["prog -- {eval}", "p {model} -- {model} {eval}", "p --task={eval}", "p x{eval}"])
def test_eval_names_starting_with_a_dash_are_fine_where_they_cant_be_options(text: str) -> None:
    """After a -- word, or inside a word that does not start with {eval}, a leading '-' is no option."""
    CommandTemplate.parse(text).check_eval_names(["-x", "--record_path=/etc/cron.d/x"])


def test_run_passes_a_dash_eval_name_after_a_double_dash(tmp_path: Path) -> None:
    """End to end: with {eval} after --, an eval named -x runs and receives -x as an operand."""
    (tmp_path / "s.yaml").write_text("s:\n  evals: ['-x']\n")
    command = f"{sys.executable} -c 'import sys; print(sys.argv[1:])' -- {{eval}}"
    result = batchrun("run", "m", "s.yaml", "--command", command, "--progress", f"{tmp_path}/p/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['--', '-x']"
