"""Settings: each study's TOML holds its defaults (and in its comments its flags' help); its Settings dataclass
declares each setting's type and constraints, with the vocabulary below; one validator checks them all.

search_spaces/common.toml holds what every study takes (data, results, Ray resources), search_spaces/<study>.toml
the study's own. Every top-level key is a flag of the same name (max_depth: --max-depth) whose help is the key's
comment; a [smoke] table replaces keys under --smoke, and a [gpu] table where the cluster has GPUs, unless the
flag was given. Flags, a --space file and a resumed run.json's settings go through the same validation (pydantic,
strict: no "1" for 1, no 1.5 for an int; NaN and ±inf refused everywhere), and a refusal is one line naming the
flag or file and the value: `--lr -1.0: must be > 0`.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import tomllib
import typing
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from annotated_types import Ge, Gt, Le, Len, Lt, MinLen
from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError

from tune_mnist.data import INPUTS
from tune_mnist.errors import UserError
from tune_mnist.models import ACTIVATIONS
from tune_mnist.optim import KINDS

TABLES = ("smoke", "gpu")
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------------
# The vocabulary. Every float is finite; ints stop at 2**53, where a float (a CSV's, a JSON reader's) still holds
# them exactly. Constraints not named here are written inline with annotated_types (Annotated[float, Gt(0), Lt(1)]).

MAX_INT = 2**53
Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Probability = Annotated[float, Ge(0), Le(1)]                  # [0, 1]
Fraction = Annotated[float, Gt(0), Le(1)]                     # (0, 1]
PositiveInt = Annotated[int, Gt(0), Le(MAX_INT)]
NonNegativeInt = Annotated[int, Ge(0), Le(MAX_INT)]
Seed = Annotated[int, Ge(0), Lt(2**63)]                      # what torch.manual_seed takes
NonEmpty = Annotated[list[T], MinLen(1)]                      # NonEmpty[Positive]: one value or more
Pair = Annotated[list[T], Len(2, 2)]                          # Pair[Positive]: exactly two (a range: low, high)
Activation = Literal[tuple(ACTIVATIONS)]
Optimizer = Literal[KINDS]                                    # adam, adamw, sgd
Inputs = Literal[INPUTS]                                      # input scalings: unit, center, standard


def _run_name(name: str) -> str:
    """A run's name: empty (a timestamp), or one path component, so that its folder stays in <results>/<study>/."""
    if name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError("must be one folder name: no '/', '.', '..' or NUL")
    if len(os.fsencode(name)) > 200:
        raise ValueError("must be at most 200 bytes")
    return name


HOST_PORT = re.compile(r"(ray://)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")


def _address(address: str) -> str:
    """A Ray address: local, auto, or [ray://]host:port."""
    found = HOST_PORT.fullmatch(address)
    if address not in ("local", "auto") and not (found and 1 <= int(found.group(3)) <= 65535):
        raise ValueError('must be "local", "auto", host:port or ray://host:port, with a port from 1 to 65535')
    return address


RunName = Annotated[str, AfterValidator(_run_name)]
Address = Annotated[str, AfterValidator(_address)]


@dataclass
class Common:
    """What every study takes: search_spaces/common.toml. Paths are checked where they are used (cli.py)."""

    data: str
    results: str
    name: RunName
    train_limit: NonNegativeInt
    eval_limit: NonNegativeInt
    storage: str
    address: Address
    cpus_per_trial: Positive
    gpus_per_trial: NonNegative
    max_concurrent: NonNegativeInt
    max_failures: NonNegativeInt


# ---------------------------------------------------------------------------------------------------------------
# Validation

STRICT = ConfigDict(strict=True, allow_inf_nan=False)


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind, config=STRICT)


def types(cls: type) -> dict[str, Any]:
    """A Settings dataclass's fields and their declared types, constraints included."""
    return typing.get_type_hints(cls, include_extras=True)


def build(cls: type, values: dict[str, Any], origins: dict[str, str]) -> Any:
    """cls from plain values (a TOML's, the flags', run.json's), each validated against its field's type; a refusal
    names the value's origin ("flag", or the file it came from)."""
    return cls(**{name: valid(name, kind, values[name], origins.get(name, "flag"))
                  for name, kind in types(cls).items()})


def valid(name: str, kind: Any, value: Any, origin: str) -> Any:
    """The value as its field's type holds it; UserError, naming the origin, if the type refuses it."""
    try:
        return _adapter(kind).validate_python(value)
    except ValidationError as e:
        raise UserError(refusal(name, value, e.errors()[0], origin)) from None


def refusal(name: str, value: Any, error: dict[str, Any], origin: str) -> str:
    """One line: `--lr -1.0: must be > 0`, or `lr = -1.0 in FILE: must be > 0`; for a list's item, the item."""
    item = value
    for step in error["loc"]:
        item = item[step] if isinstance(item, (list, dict)) else item
    if origin == "flag":
        shown = " ".join(map(_shown, item)) if isinstance(item, list) else _shown(item)
        return f"--{name.replace('_', '-')} {shown}: {reason(error)}"
    where = name + "".join(f"[{step}]" for step in error["loc"])
    return f"{where} = {item!r} in {origin}: {reason(error)}"


def reason(error: dict[str, Any]) -> str:
    ctx = error.get("ctx", {})
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if error["type"] in bounds:
        (bound,) = ctx.values()
        return f"must be {bounds[error['type']]} {bound:g}" if isinstance(bound, float) else \
            f"must be {bounds[error['type']]} {bound}"
    known = {
        "finite_number": "must be a finite number",
        "too_short": f"needs at least {ctx.get('min_length')} value{'s' * (ctx.get('min_length') != 1)}",
        "too_long": f"takes at most {ctx.get('max_length')} value{'s' * (ctx.get('max_length') != 1)}",
        "literal_error": f"must be {ctx.get('expected')}",
        "int_type": "must be a whole number", "float_type": "must be a number", "string_type": "must be text",
        "bool_type": "must be true or false", "list_type": "must be a list",
    }
    return known.get(error["type"], error["msg"].removeprefix("Value error, "))


def _shown(value: Any) -> str:
    """A flag's value as typed; empty text, or text with unprintable characters, quoted."""
    if isinstance(value, str) and not (value.isprintable() and value):
        return repr(value)
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# The TOMLs and the flags

def builtin(study: str) -> Path:
    """A search space file installed with the package (the repository's search_spaces/), or, where the package
    runs from a checkout that is not installed (PYTHONPATH), the checkout's."""
    try:
        installed = Path(str(files("tune_mnist.search_spaces") / f"{study}.toml"))
    except ModuleNotFoundError:
        installed = None
    return installed if installed and installed.is_file() else Path(__file__).parents[1] / "search_spaces" / f"{study}.toml"


def comments(text: str) -> dict[str, str]:
    """Each top-level key's trailing comment: its flag's help."""
    helps, table = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped
        elif table is None and "=" in stripped and not stripped.startswith("#"):
            key, _, rest = stripped.partition("=")
            quoted = False
            for i, c in enumerate(rest):
                quoted ^= c == '"'
                if c == "#" and not quoted:
                    helps[key.strip()] = rest[i + 1:].strip()
                    break
    return helps


def read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A search space file's values and comments; UserError for anything that is not a readable TOML file."""
    try:
        text = path.read_bytes().decode("utf-8")
        values = tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"search space file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"search space file {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise UserError(f"search space file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"search space file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read search space file {path}: {e.strerror or e}") from None
    for table in TABLES:
        if not isinstance(values.get(table, {}), dict):
            raise UserError(f"search space file {path}: {table} must be a table ([{table}]), got {values[table]!r}")
    return values, comments(text)


def scalar(kind: Any) -> tuple[type, tuple[Any, ...], bool]:
    """A field's type as a flag sees it: the type of one value, its choices (a Literal's), and whether it takes a
    list of them."""
    while typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) is list:
        item, choices, _ = scalar(typing.get_args(kind)[0])
        return item, choices, True
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        return type(choices[0]), choices, False
    return kind, (), False


class Space:
    """A study's defaults: common.toml and its own file, with their [smoke] and [gpu] tables and flag help.

    Each value remembers where it came from (`origins`), so that a refusal names the file that set it.
    """

    def __init__(self, cls: type, study: str, override: str | None = None):
        self.cls, self.study = cls, study
        self.types = types(cls)
        self.values: dict[str, Any] = {}
        self.help: dict[str, str] = {}
        self.origins: dict[str, str] = {}
        self.tables: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
        self.table_origins: dict[str, dict[str, str]] = {t: {} for t in TABLES}
        for path in (builtin("common"), builtin(study), *([Path(override)] if override else [])):
            values, helps = read(path)
            for table in TABLES:
                part = values.pop(table, {})
                self.tables[table].update(part)
                self.table_origins[table].update(dict.fromkeys(part, f"{path} [{table}]"))
            unknown = set(values) | {k for t in self.tables.values() for k in t}
            unknown -= set(self.types)
            if unknown:
                raise UserError(f"{path} sets {', '.join(sorted(unknown))}, which {study} does not take")
            self.values.update(values)
            self.origins.update(dict.fromkeys(values, str(path)))
            self.help.update(helps)
        missing = set(self.types) - set(self.values)
        if missing:
            raise UserError(f"the search space of {study} lacks {', '.join(sorted(missing))}")

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """A flag per key, default None (so that what was given is known), help showing the TOML's value and, for a
        choice, the choices. The flag parses the value's type; its constraints are checked with the rest."""
        def shown(value: Any) -> str:
            return " ".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else str(value)

        for name, kind in self.types.items():
            flag = "--" + name.replace("_", "-")
            on_gpus = f"; with GPUs: {shown(self.tables['gpu'][name])}" if name in self.tables["gpu"] else ""
            item, choices, many = scalar(kind)
            one_of = f"; one of: {', '.join(map(str, choices))}" if choices else ""
            helptext = f"{self.help.get(name, '')} (default: {shown(self.values[name])}{on_gpus}{one_of})"
            if item is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
            else:
                parser.add_argument(flag, type=item, nargs="+" if many else None, default=None, help=helptext)

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The flags given on the command line."""
        return {k: v for k, v in vars(args).items() if k in self.types and v is not None}

    def layers(self, args: argparse.Namespace, smoke: bool, gpu: bool) -> tuple[dict[str, Any], dict[str, str]]:
        """The values in force and their origins: the TOMLs, their [gpu] and [smoke] tables where they apply, the
        flags."""
        values, origins = dict(self.values), dict(self.origins)
        for table, applies in (("gpu", gpu), ("smoke", smoke)):
            if applies:
                values.update(self.tables[table])
                origins.update(self.table_origins[table])
        given = self.given(args)
        return {**values, **given}, {**origins, **dict.fromkeys(given, "flag")}

    def value(self, name: str, args: argparse.Namespace, smoke: bool = False) -> Any:
        """One setting, validated, before the others: the address decides whether the [gpu] table applies."""
        values, origins = self.layers(args, smoke, gpu=False)
        return valid(name, self.types[name], values[name], origins[name])

    def settings(self, args: argparse.Namespace, smoke: bool = False, gpu: bool = False) -> Any:
        """The study's Settings: the TOML's values, its [smoke] and [gpu] tables where they apply, then the flags."""
        return build(self.cls, *self.layers(args, smoke, gpu))

    def saved(self, settings: dict[str, Any], origin: str, given: dict[str, Any] | None = None) -> Any:
        """The Settings a run was made with (its run.json's), flags `given` over them; a setting added to the study
        since the run began takes its default."""
        given = given or {}
        values = {**self.values, **settings, **given}
        origins = {**self.origins, **dict.fromkeys(settings, origin), **dict.fromkeys(given, "flag")}
        return build(self.cls, values, origins)
