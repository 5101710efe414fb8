"""The --command template."""

from __future__ import annotations

import pytest

from batchrun import CommandTemplate, CommandTemplateError


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


@pytest.mark.parametrize("text", ["x {evl}", "x {0}", "x {}", "x {eval.__class__}", "x {", "x 'open", ""])
def test_bad_templates_are_usage_errors(text: str) -> None:
    """Unknown placeholders, attribute access, bad braces or quotes, and empty commands are refused."""
    with pytest.raises(CommandTemplateError):
        CommandTemplate.parse(text)
