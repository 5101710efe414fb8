"""The command that runs one eval: a shell-like template whose words are formatted one by one."""

from __future__ import annotations

import re
import shlex
import shutil
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import CommandTemplateError, EvalSetError

DEFAULT_COMMAND = "oaieval {model} {eval}"
PLACEHOLDERS = frozenset({"model", "eval", "eval_set", "attempt", "state"})
_CONVERSIONS = (None, "s", "r", "a")
_PROBE = {"model": "model", "eval": "eval", "eval_set": "set", "attempt": 1, "state": "/state"}
_WIDE = re.compile(r"[0-9]{5}")  # a width or precision of 10,000 or more: refused, not allocated
_NOT_YET = "\0state\0"  # {state} while checking: the folder is made later, its files are not checked
_INTERPRETER = re.compile(r"(python|pypy)[0-9.]*|bash|sh|dash|zsh|node|ruby|perl|Rscript")


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

    def render(self, *, model: str, eval_name: str, eval_set: str, attempt: int, state: str = "") -> list[str]:
        """The argv for one attempt of *eval_name*, with the extra args appended."""
        values = {"model": model, "eval": eval_name, "eval_set": eval_set, "attempt": attempt, "state": state}
        return [word.format_map(values) for word in self.words] + list(self.extra_args)

    @property
    def uses_state(self) -> bool:
        """Whether some word of the command names the eval's state folder."""
        return any(field == "state" for word in self.words for _, field, _, _ in string.Formatter().parse(word))

    def check_program(self, *, model: str, evals: Iterable[str], eval_set: str) -> None:
        """Raise if the program the template starts can't be found, or is an interpreter (python,
        bash, node, ...) whose script does not exist for some eval, before anything runs.
        """
        checked: set[tuple[str, ...]] = set()  # each distinct program and script once (PATH look-ups cost)
        for eval_name in evals:
            argv = self.render(model=model, eval_name=eval_name, eval_set=eval_set, attempt=1, state=_NOT_YET)
            program = argv[0]
            if tuple(argv[:2]) in checked:
                continue
            checked.add(tuple(argv[:2]))
            if shutil.which(program) is None:
                msg = f"--command {self.text!r}: program {program!r} not found or not executable"
                if program == "oaieval":
                    msg += " (install openai/evals, or give --command)"
                raise CommandTemplateError(msg)
            script = argv[1] if len(argv) > 1 and _INTERPRETER.fullmatch(Path(program).name) else "-"
            if not script.startswith("-") and _NOT_YET not in script and not Path(script).exists():
                msg = f"--command {self.text!r}: {program} would run {script!r}, which does not exist"
                raise CommandTemplateError(msg)
            if not any("{eval" in word for word in self.words[:2]):
                return  # the program and its script are the same for every eval

    def check_eval_names(self, evals: Iterable[str]) -> None:
        """Refuse an eval name starting with ``-`` where it would begin a word before any ``--``:
        the program would read it as an option (``-h``, ``--record_path=...``).
        """
        if not self._eval_may_be_an_option():
            return
        for name in evals:
            if name.startswith("-"):
                msg = (
                    f"eval {name!r} starts with '-' and would reach the command as an option; "
                    f"put {{eval}} after a -- word in --command (e.g. 'prog {{model}} -- {{eval}}') or rename it"
                )
                raise EvalSetError(msg)

    def _eval_may_be_an_option(self) -> bool:
        """Whether some word before the first ``--`` word starts with the eval name."""
        for word in self.words:
            if word == "--":
                return False
            first = next(iter(string.Formatter().parse(word)), None)
            if first is not None and first[0] == "" and first[1] == "eval":
                return True
        return False


def _check_word(word: str, text: str) -> None:
    try:
        fields = [(field, spec, conv) for _, field, spec, conv in string.Formatter().parse(word) if field is not None]
    except ValueError as exc:
        msg = f"--command {text!r}: {exc} in {word!r} (write {{{{ and }}}} for literal braces)"
        raise CommandTemplateError(msg) from None
    for field, format_spec, conversion in fields:
        spec = format_spec or ""
        if field not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
            msg = f"--command {text!r}: unknown placeholder {{{field}}} (known: {known})"
            raise CommandTemplateError(msg)
        if conversion not in _CONVERSIONS:
            msg = f"--command {text!r}: unknown conversion !{conversion} in {word!r} (known: !s, !r, !a)"
            raise CommandTemplateError(msg)
        if "{" in spec or "}" in spec or _WIDE.search(spec):
            msg = f"--command {text!r}: format spec {spec!r} in {word!r} is not allowed"
            raise CommandTemplateError(msg)
    try:  # a format spec that doesn't fit the value's type ({model:d}) fails the same way for every value
        word.format_map(_PROBE)
    except (ValueError, TypeError) as exc:
        msg = f"--command {text!r}: {exc} in {word!r}"
        raise CommandTemplateError(msg) from None
