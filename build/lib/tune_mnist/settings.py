"""Settings: each study's TOML holds its defaults, and in its comments its flags' help.

search_spaces/common.toml holds what every study takes (data, results, Ray resources), search_spaces/<study>.toml
the study's own. Every top-level key is a flag of the same name (max_depth: --max-depth) whose help is the key's
comment; a [smoke] table replaces keys under --smoke, and a [gpu] table where the cluster has GPUs, unless the
flag was given. A study's Settings dataclass names its keys and their types; the TOML and the flags fill it.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from tune_mnist.errors import UserError

TABLES = ("smoke", "gpu")


@dataclass
class Common:
    """What every study takes: search_spaces/common.toml."""

    data: str
    results: str
    name: str
    train_limit: int
    eval_limit: int
    storage: str
    address: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    max_failures: int


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
    try:
        text = path.read_text()
        return tomllib.loads(text), comments(text)
    except FileNotFoundError:
        raise UserError(f"search space file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"search space file {path} is not valid TOML: {e}") from None


class Space:
    """A study's defaults: common.toml and its own file, with their [smoke] and [gpu] tables and flag help."""

    def __init__(self, cls: type, study: str, override: str | None = None):
        self.cls = cls
        self.types = typing.get_type_hints(cls)
        self.values, self.help = {}, {}
        self.tables: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
        for path in (builtin("common"), builtin(study), *([Path(override)] if override else [])):
            values, helps = read(path)
            for table in TABLES:
                self.tables[table].update(values.pop(table, {}))
            unknown = set(values) | {k for t in self.tables.values() for k in t}
            unknown -= set(self.types)
            if unknown:
                raise UserError(f"{path} sets {', '.join(sorted(unknown))}, which {study} does not take")
            self.values.update(values)
            self.help.update(helps)
        missing = set(self.types) - set(self.values)
        if missing:
            raise UserError(f"the search space of {study} lacks {', '.join(sorted(missing))}")

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """A flag per key, default None (so that what was given is known), help showing the TOML's value."""
        def shown(value: Any) -> str:
            return " ".join(map(str, value)) if isinstance(value, list) else repr(value) if value == "" else str(value)

        for name, kind in self.types.items():
            flag = "--" + name.replace("_", "-")
            on_gpus = f"; with GPUs: {shown(self.tables['gpu'][name])}" if name in self.tables["gpu"] else ""
            helptext = f"{self.help.get(name, '')} (default: {shown(self.values[name])}{on_gpus})"
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
            elif typing.get_origin(kind) is list:
                (item,) = typing.get_args(kind)
                parser.add_argument(flag, type=item, nargs="+", default=None, help=helptext)
            else:
                parser.add_argument(flag, type=kind, default=None, help=helptext)

    def settings(self, args: argparse.Namespace, smoke: bool = False, gpu: bool = False) -> Any:
        """The study's Settings: the TOML's values, its [smoke] and [gpu] tables where they apply, then the flags."""
        values = dict(self.values)
        for table, applies in (("gpu", gpu), ("smoke", smoke)):
            if applies:
                values.update(self.tables[table])
        values.update({k: v for k, v in vars(args).items() if k in self.types and v is not None})
        return build(self.cls, values)


def build(cls: type, values: dict[str, Any]) -> Any:
    """cls from plain values (a TOML's, or run.json's), each checked against its field's type."""
    types = typing.get_type_hints(cls)
    out = {}
    for name, kind in types.items():
        value = values[name]
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
        if item is not None and isinstance(value, list) and all(ok(v, item) for v in value):
            out[name] = [float(v) if item is float else v for v in value]
        elif item is None and ok(value, kind):
            out[name] = float(value) if kind is float else value
        else:
            raise UserError(f"setting {name} = {value!r} is not of type {getattr(kind, '__name__', kind)}")
    return cls(**out)


def ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def as_dict(s: Any) -> dict[str, Any]:
    return dataclasses.asdict(s)
