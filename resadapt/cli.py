"""The one config → command-line layer of every entry point: typed dataclass fields become flags.

Owns flag building (from field types and help), ``--config FILE`` defaults, the error wrapper that
turns a :class:`ResAdaptError` into one ``error: …`` line and exit code 2, and logging set-up.
Knows nothing about models, videos or training.

A field becomes ``--field-name`` (or the names in ``metadata["flags"]``, or a positional argument
with ``metadata["positional"]``). Its annotation sets the parsing: ``str``, ``int``, ``float``,
``bool`` (``--x`` / ``--no-x``), ``X | None`` (``none`` gives None), ``tuple[X, ...]`` /
``list[X]`` (a comma list); ``metadata["choices"]`` restricts the values and ``metadata["parse"]``
replaces the conversion of a flag's text. A field without a default is a required flag. The help
and the choices may be callables, read when a parser is built or a value checked (e.g. the names
of a registry that grows after import).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

from resadapt.errors import ResAdaptError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""Format of every entry point's log lines (stderr)."""


class UsageError(ResAdaptError):
    """A command line that does not parse (unknown flag, bad value, missing argument)."""


def option(
    help: str | Callable[[], str],
    default=MISSING,
    *,
    default_factory=MISSING,
    choices: Sequence | Callable[[], Sequence] | None = None,
    parse: Callable[[str], object] | None = None,
    flags: Sequence[str] = (),
    positional: bool = False,
) -> Field:
    """A dataclass field with its command-line help (see the module docstring for the rest)."""
    if not callable(choices):
        choices = tuple(choices) if choices else None
    metadata = {"help": help, "choices": choices, "parse": parse}
    metadata |= {"flags": tuple(flags), "positional": positional}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def default_of(cls: type, name: str):
    """The default of field ``name`` of dataclass ``cls`` (one default per knob in the project)."""
    for f in fields(cls):
        if f.name == name:
            if f.default_factory is not MISSING:
                return f.default_factory()
            if f.default is MISSING:
                raise KeyError(f"{cls.__name__}.{name} has no default")
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def help_of(f: Field) -> str:
    """A field's help text (a callable help is called now)."""
    text = f.metadata["help"]
    return text() if callable(text) else text


def choices_of(f: Field) -> tuple | None:
    """A field's allowed values, or None (callable choices are called now)."""
    choices = f.metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


def check_field(config, name: str, ok: bool, rule: str) -> None:
    """Raise the one-sentence error of a field outside its range, naming the flag and value."""
    if not ok:
        value = getattr(config, name)
        raise ResAdaptError(f"--{name.replace('_', '-')} {rule}, got {value!r}")


def check_choices(config) -> None:
    """Raise for any field of dataclass ``config`` whose value is not among its ``choices`` (the
    command line checks these too; this covers a config built in code)."""
    for f in fields(config):
        allowed, value = choices_of(f), getattr(config, f.name)
        if allowed is not None and value is not None:
            check_field(config, f.name, value in allowed, f"must be one of {', '.join(allowed)}")


# ------------------------------------------------------------------------------------ conversion
@dataclass(frozen=True)
class _Kind:
    """How a field's annotation reads a value: base type, optional, sequence."""

    base: type
    optional: bool
    sequence: type | None  # tuple or list, or None for a single value


def _kind(annotation) -> _Kind:
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return _Kind(args[0] if args else str, optional, origin)
    return _Kind(annotation, optional, None)


def _one(kind: _Kind, name: str, value):
    """One scalar value (a flag's text or a config file's value) → the field's base type."""
    if kind.base is bool and not isinstance(value, bool):
        text = str(value).lower()
        if text not in ("true", "false"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return text == "true"
    if kind.base is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if kind.base in (int, float, str, bool):
        try:
            return kind.base(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid {kind.base.__name__} value for {name}: {value!r}") from e
    return value


@dataclass(frozen=True)
class _Converter:
    """argparse ``type`` (and config-file converter) of one field."""

    f: Field
    kind: _Kind

    @property
    def flag(self) -> str:
        return _flags(self.f)[0]

    def __call__(self, value):
        try:
            return self._convert(value)
        except (ValueError, ResAdaptError) as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    def _convert(self, value):
        kind = self.kind
        if kind.optional and (value is None or str(value).strip().lower() in ("none", "")):
            return None
        if self.f.metadata["parse"] is not None:
            return self.f.metadata["parse"](value) if isinstance(value, str) else value
        if kind.sequence is not None:
            items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
            items = [self._checked(_one(kind, self.flag, v)) for v in items if v != ""]
            return kind.sequence(items)
        return self._checked(_one(kind, self.flag, value))

    def _checked(self, value):
        choices = choices_of(self.f)
        if choices is not None and value not in choices:
            allowed = ", ".join(str(c) for c in choices)
            raise ValueError(f"{self.flag} must be one of {allowed}, got {value!r}")
        return value


def _flags(f: Field) -> tuple[str, ...]:
    return f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(getattr(v, "label", v)) for v in value) or "none"
    return str(value)


# ------------------------------------------------------------------------------------ parsing
class Parser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UsageError` instead of exiting (see :func:`run`)."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def _fields(classes: Sequence[type], exclude: Sequence[str]) -> list[tuple[Field, _Kind]]:
    out, seen = [], set()
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in exclude or f.name in seen or "help" not in f.metadata:
                continue
            seen.add(f.name)
            out.append((f, _kind(hints[f.name])))
    return out


def build_parser(
    *classes: type,
    prog: str,
    description: str,
    exclude: Sequence[str] = (),
    defaults: dict | None = None,
    config_file: bool = True,
) -> Parser:
    """One argument per field of ``classes`` (first class wins a shared name), help from it."""
    defaults = defaults or {}
    parser = Parser(prog=prog, description=description)
    if config_file:
        parser.add_argument(
            "--config",
            default=None,
            help="YAML or JSON file of field values used as defaults (e.g. a run's saved config)",
        )
    for f, kind in _fields(classes, exclude):
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = f.default
        required = default is MISSING
        text = help_of(f)
        if not required and default != "" and "default:" not in text:  # "": no value
            text += f" (default: {_show(default)})"
        if f.metadata["positional"]:
            parser.add_argument(f.name, type=_Converter(f, kind), help=text)
            continue
        spec: dict = {"dest": f.name, "help": text}
        if kind.base is bool and kind.sequence is None and not kind.optional:
            spec["action"] = argparse.BooleanOptionalAction
        else:
            spec["type"] = _Converter(f, kind)
            spec["metavar"] = f.name.upper()
        if required:
            spec["required"] = True
        else:
            spec["default"] = default
        parser.add_argument(*_flags(f), **spec)
    return parser


def read_config_file(path: str, *classes: type, exclude: Sequence[str] = ()) -> dict:
    """Field values from a YAML (needs PyYAML) or JSON file; unknown keys are an error."""
    file = Path(path)
    if not file.is_file():
        raise ResAdaptError(f"--config {path} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ResAdaptError(
                f"--config {path} is YAML but PyYAML is not installed; pip install pyyaml or "
                "use a JSON file"
            ) from e
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ResAdaptError(f"--config {path} is not valid YAML: {e}") from e
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ResAdaptError(f"--config {path} is not valid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ResAdaptError(f"--config {path} must hold a mapping of field names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = {f.name: (f, kind) for f, kind in _fields(classes, exclude)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ResAdaptError(f"--config {path} has unknown fields: {', '.join(unknown)}")
    converted = {}
    for name, value in values.items():
        try:
            converted[name] = _Converter(*known[name])._convert(value)
        except (ValueError, ResAdaptError) as e:
            raise ResAdaptError(f"--config {path}: {e}") from e
    return converted


def parse(
    argv: Sequence[str] | None,
    *classes: type,
    prog: str,
    description: str,
    exclude: Sequence[str] = (),
    extra: Callable[[Parser], None] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` into a namespace of the fields of ``classes`` (``--config`` applied first).

    ``extra`` adds arguments that belong to the entry point, not to a config (e.g. ``--json``).
    Raises :class:`UsageError` / :class:`ResAdaptError`; :func:`run` turns them into exit code 2.
    """
    pre = Parser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    defaults = read_config_file(known.config, *classes, exclude=exclude) if known.config else {}
    parser = build_parser(
        *classes, prog=prog, description=description, exclude=exclude, defaults=defaults
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    del args.config
    return args


def make(cls: type, args: argparse.Namespace, **overrides):
    """An instance of dataclass ``cls`` from the parsed namespace (its own fields only)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


# ------------------------------------------------------------------------------------ running
def setup_logging(level: int = logging.WARNING, fmt: str = LOG_FORMAT) -> None:
    """Entry points' logging: one stderr handler; library modules only log."""
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger("resadapt").setLevel(level)


def run(main: Callable[[], int | None]) -> int:
    """Call an entry point's body; a ResAdaptError becomes ``error: …`` on stderr and exit 2."""
    try:
        return main() or 0
    except ResAdaptError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
