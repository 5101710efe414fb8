"""The command that runs one eval: a shell-like template whose words are formatted one by one."""

from __future__ import annotations

import shlex
import shutil
import string
from dataclasses import dataclass

from batchrun.errors import CommandTemplateError

DEFAULT_COMMAND = "oaieval {model} {eval}"
PLACEHOLDERS = frozenset({"model", "eval", "eval_set", "attempt"})


@dataclass(frozen=True, slots=True)
class CommandTemplate:
    """A parsed ``--command``; :meth:`render` gives the argv of one eval, never through a shell."""

    text: str
    words: tuple[str, ...]
    extra_args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, extra_args: tuple[str, ...] = ()) -> CommandTemplate:
        """Split *text* like a shell line and check every placeholder; raise on anything unknown."""
        try:
            words = tuple(shlex.split(text))
        except ValueError as exc:
            msg = f"--command {text!r}: {exc}"
            raise CommandTemplateError(msg) from None
        if not words:
            msg = "--command is empty"
            raise CommandTemplateError(msg)
        for word in words:
            _check_word(word, text)
        return cls(text=text, words=words, extra_args=extra_args)

    def render(self, *, model: str, eval_name: str, eval_set: str, attempt: int) -> list[str]:
        """The argv for one attempt of *eval_name*, with the extra args appended."""
        values = {"model": model, "eval": eval_name, "eval_set": eval_set, "attempt": attempt}
        return [word.format_map(values) for word in self.words] + list(self.extra_args)

    def check_program(self, *, model: str, eval_name: str, eval_set: str) -> None:
        """Raise if the program the template starts can't be found, before anything runs."""
        program = self.render(model=model, eval_name=eval_name, eval_set=eval_set, attempt=1)[0]
        if shutil.which(program) is None:
            msg = f"--command {self.text!r}: program {program!r} not found or not executable"
            if program == "oaieval":
                msg += " (install openai/evals, or give --command)"
            raise CommandTemplateError(msg)


def _check_word(word: str, text: str) -> None:
    try:
        fields = [field for _, field, spec, _ in string.Formatter().parse(word) if field is not None]
    except ValueError as exc:
        msg = f"--command {text!r}: {exc} in {word!r} (write {{{{ and }}}} for literal braces)"
        raise CommandTemplateError(msg) from None
    for field in fields:
        if field not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
            msg = f"--command {text!r}: unknown placeholder {{{field}}} (known: {known})"
            raise CommandTemplateError(msg)
