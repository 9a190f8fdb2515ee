"""The population report format: how a trial's report to Tune holds each member's metrics.

A population trial reports every member's metrics as "m<i>/<metric>" (i: the member's entry in the trial's
config["members"]) beside the keys the whole trial shares (the members' means, which Tune's metric reads, and
where the trial ran). This module alone writes and reads that format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_KEY = re.compile(r"m(\d+)/(.+)")


def key(member: int, metric: str) -> str:
    """The report key of one member's metric."""
    return f"m{member}/{metric}"


def is_member_key(name: str) -> bool:
    return _KEY.fullmatch(name) is not None


def encode(per_member: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """{member: {metric: value}} -> report keys."""
    return {key(i, metric): value for i, metrics in per_member.items() for metric, value in metrics.items()}


def decode(report: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """A report's members' metrics, {member: {metric: value}}; the shared keys are left out (see `shared`)."""
    out: dict[int, dict[str, Any]] = {}
    for name, value in report.items():
        if match := _KEY.fullmatch(name):
            out.setdefault(int(match[1]), {})[match[2]] = value
    return out


def shared(report: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a report that belong to the whole trial."""
    return {name: value for name, value in report.items() if not is_member_key(name)}
