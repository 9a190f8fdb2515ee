"""Search spaces are data: one TOML file per study in tune_mnist/search_spaces/, overridable with --space."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tune_mnist.errors import UserError

BUILTIN = Path(__file__).parent / "search_spaces"


def load(study: str, path: str | Path | None = None) -> dict[str, Any]:
    file = Path(path) if path else BUILTIN / f"{study}.toml"
    try:
        return tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"search space file {file} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"search space file {file} is not valid TOML: {e}") from None
