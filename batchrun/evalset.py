"""Loading an eval set: from a file (YAML sets, a YAML list, or plain text), a registry folder,
or openai/evals' own registry.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import EvalSetError

_YAML_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class EvalSet:
    """A named, ordered list of distinct eval names."""

    name: str
    evals: tuple[str, ...]
    source: str


def check_eval_name(name: object, where: str) -> str:
    """Return *name* if it can be an eval name, else raise EvalSetError saying why."""
    if not isinstance(name, str):
        msg = f"{where}: eval name must be a string, got {type(name).__name__} {name!r}"
        raise EvalSetError(msg)
    if not name.strip():
        msg = f"{where}: eval name is empty"
        raise EvalSetError(msg)
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        msg = f"{where}: eval name {name!r} contains a newline or control character"
        raise EvalSetError(msg)
    return name


def make_eval_set(name: str, evals: Iterable[object], source: str) -> EvalSet:
    """Validate and de-duplicate *evals*, keeping their first-seen order."""
    if not name or any(unicodedata.category(ch) == "Cc" for ch in name):
        msg = f"{source}: invalid eval set name {name!r}"
        raise EvalSetError(msg)
    seen: dict[str, None] = {}
    for index, raw in enumerate(evals, start=1):
        seen.setdefault(check_eval_name(raw, f"{source}: eval #{index}"), None)
    if not seen:
        msg = f"{source}: eval set {name!r} is empty"
        raise EvalSetError(msg)
    return EvalSet(name=name, evals=tuple(seen), source=source)


def load_eval_set(ref: str, registry_paths: Sequence[str] = ()) -> EvalSet:
    """Resolve *ref*: a file or URL (``FILE#SET`` picks one set), else a set name in the registries."""
    if not ref.strip():
        msg = "eval set is empty: give a file, URL or set name"
        raise EvalSetError(msg)
    location, _, set_name = ref.partition("#")
    if set_name or "://" in location or Path(location).exists():
        return _load_file(location, set_name or None)
    found = _find_in_registry_paths(ref, registry_paths)
    if found is not None:
        return found
    if importlib.util.find_spec("evals") is not None:
        return _load_from_openai_evals(ref, registry_paths)
    if "/" in ref or ref.endswith((*_YAML_SUFFIXES, ".txt")):
        msg = f"eval-set file not found: {ref}"
    else:
        where = ", ".join(registry_paths) or "no --registry-path given"
        msg = (
            f"eval set {ref!r} not found: no such file, not in registry paths ({where}), "
            "and openai/evals is not installed"
        )
    raise EvalSetError(msg)


def _read_text(location: str) -> str:
    try:
        if "://" in location:
            import fsspec  # noqa: PLC0415 - only URLs pay for fsspec

            with fsspec.open(location, "rt", encoding="utf-8") as fh:
                return str(fh.read())
        return Path(location).read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"eval-set file not found: {location}"
        raise EvalSetError(msg) from None
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as exc:
        msg = f"cannot read eval-set file {location}: {exc}"
        raise EvalSetError(msg) from None


def _parse_yaml(text: str, location: str) -> object:
    import yaml  # noqa: PLC0415 - only YAML sets pay for PyYAML

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        msg = f"malformed YAML in {location}{where}: {problem}"
        raise EvalSetError(msg) from None


def _load_file(location: str, set_name: str | None) -> EvalSet:
    text = _read_text(location)
    stem = Path(location.rstrip("/")).name
    for suffix in (*_YAML_SUFFIXES, ".txt"):
        stem = stem.removesuffix(suffix)
    if not location.endswith(_YAML_SUFFIXES):
        if set_name is not None:
            msg = f"{location}: '#{set_name}' needs a YAML file with named sets"
            raise EvalSetError(msg)
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return make_eval_set(stem, [line for line in lines if line], location)
    return _from_document(_parse_yaml(text, location), stem, set_name, location)


def _from_document(doc: object, stem: str, set_name: str | None, location: str) -> EvalSet:
    if isinstance(doc, list):
        if set_name is not None:
            msg = f"{location}: '#{set_name}' needs named sets, but the file is a plain list"
            raise EvalSetError(msg)
        return make_eval_set(stem, doc, location)
    if not isinstance(doc, dict) or not doc:
        msg = f"{location}: expected '<set-name>: {{evals: [...]}}' or a list of evals"
        raise EvalSetError(msg)
    if set_name is None:
        if len(doc) > 1:
            names = ", ".join(map(str, doc))
            msg = f"{location} holds several sets ({names}): choose one with {location}#SET"
            raise EvalSetError(msg)
        set_name = str(next(iter(doc)))
    if set_name not in doc:
        msg = f"eval set {set_name!r} not found in {location} (it has: {', '.join(map(str, doc))})"
        raise EvalSetError(msg)
    return _from_set_body(set_name, doc[set_name], location)


def _from_set_body(name: str, body: object, location: str) -> EvalSet:
    evals = body.get("evals") if isinstance(body, dict) else None
    if not isinstance(evals, list):
        msg = f"{location}: set {name!r} needs an 'evals' list"
        raise EvalSetError(msg)
    return make_eval_set(name, evals, location)


def _find_in_registry_paths(name: str, registry_paths: Sequence[str]) -> EvalSet | None:
    for root in registry_paths:
        for path in sorted(Path(root, "eval_sets").glob("*.y*ml")):
            doc = _parse_yaml(_read_text(str(path)), str(path))
            if isinstance(doc, dict) and name in doc:
                found = _from_set_body(name, doc[name], str(path))
                specs = _eval_specs(registry_paths)
                if not specs:  # a folder of sets only: the entries are the evals
                    return found
                return make_eval_set(name, _resolved(found.evals, specs, str(path)), str(path))
    return None


def _eval_specs(registry_paths: Sequence[str]) -> dict[str, object]:
    """Every eval definition in ``evals/*.yaml`` below the registry paths, in file order."""
    specs: dict[str, object] = {}
    for root in registry_paths:
        for path in sorted(Path(root, "evals").glob("**/*.y*ml")):
            doc = _parse_yaml(_read_text(str(path)), str(path))
            if isinstance(doc, dict):
                specs.update((str(key), value) for key, value in doc.items())
    return specs


def _resolved(entries: Sequence[str], specs: dict[str, object], location: str) -> list[str]:
    """Set entries as oaievalset runs them: each a pattern (``*`` any text) matched against the
    eval names, each match followed through its ``id`` alias to the full key.
    """
    keys: list[str] = []
    for entry in entries:
        matches = [name for name in specs if fnmatch.fnmatchcase(name, entry)]
        if not matches:
            if "*" in entry or "?" in entry or "[" in entry:
                msg = f"{location}: pattern {entry!r} matches no eval in the registry's evals/"
                raise EvalSetError(msg)
            matches = [entry]  # not defined here: run it under the name the set gives
        keys.extend(_full_key(name, specs) for name in matches)
    return keys


def _full_key(name: str, specs: dict[str, object]) -> str:
    seen = {name}
    spec = specs.get(name)
    while isinstance(spec, dict) and isinstance(spec.get("id"), str) and spec["id"] not in seen:
        name = spec["id"]
        seen.add(name)
        spec = specs.get(name)
    return name


def _load_from_openai_evals(name: str, registry_paths: Sequence[str]) -> EvalSet:
    """Resolve *name* the way oaievalset does: set lookup, then patterns to full eval keys."""
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-batchrun")  # `import evals` insists
    try:
        from evals.registry import Registry  # noqa: PLC0415 - optional, heavy
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        msg = f"eval set {name!r} not found, and openai/evals could not be imported: {exc}"
        raise EvalSetError(msg) from None
    registry = Registry()
    if registry_paths:
        registry.add_registry_paths(list(registry_paths))
    spec = registry.get_eval_set(name)
    if spec is None:
        msg = f"eval set {name!r} not found in openai/evals' registry or the registry paths"
        raise EvalSetError(msg)
    keys = [e.key for e in registry.get_evals(spec.evals) if e is not None and e.key]
    return make_eval_set(name, keys, f"openai/evals registry set {name!r}")
