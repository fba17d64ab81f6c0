"""What a validation found: one :class:`Check` per check, gathered in a :class:`ValidationReport`.

The report prints itself for a terminal (:meth:`ValidationReport.format`) and turns into plain
JSON data for programs (:meth:`ValidationReport.to_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, ``ok``/``warn``/``fail`` and what it found.

    ``figures`` holds the same findings as plain data (counts, ranges, maxima) for programs.
    """

    name: str
    status: Status
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "figures": _plain(self.figures),
        }


@dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`validate_store` found, check by check.

    ``skipped`` lists ``(name, reason)`` for checks that were not requested or could not run
    because what they read is missing (which another check then reports as a failure).
    """

    path: str
    checks: list[Check]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def check(self, name: str) -> Check:
        """The check called ``name``; ``KeyError`` if it did not run."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r} in this report (ran: {[c.name for c in self.checks]})")

    def verdict(self) -> str:
        """One line: ``OK``, ``OK with N warnings (...)`` or ``FAIL: N checks failed (...)``."""
        warn = [c.name for c in self.warnings]
        if self.failures:
            names = [c.name for c in self.failures]
            return f"FAIL: {_plural(len(names), 'check')} failed ({', '.join(names)})"
        if warn:
            return f"OK with {_plural(len(warn), 'warning')} ({', '.join(warn)})"
        return f"OK: all {len(self.checks)} checks passed"

    def format(self) -> str:
        """A terminal summary: one line per check, then the skipped checks and the verdict."""
        width = max([len(c.name) for c in self.checks] + [len(n) for n, _ in self.skipped] + [5])
        lines = [f"store {self.path}"]
        lines += [f"{c.status.upper():<5} {c.name:<{width}}  {c.detail}" for c in self.checks]
        lines += [f"skip  {name:<{width}}  {reason}" for name, reason in self.skipped]
        lines.append(f"verdict: {self.verdict()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "verdict": self.verdict(),
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Skip(Exception):
    """A check cannot run: what it needs is missing (and reported by another check)."""
