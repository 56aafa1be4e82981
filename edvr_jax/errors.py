"""The errors a user can fix.

Every error raised for bad input (a file, a path, a config field, a weight) derives from
``UserError`` and names what is wrong and what was expected. The command lines print such an
error as one ``error: ...`` line and exit with status 2 (``edvr_jax.cli``); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable


class UserError(Exception):
    """Bad input: the message says what and where, and what was expected."""


class ArgumentError(ValueError):
    """Arguments that cannot work, as ``problems``: ``(name, value, allowed)``, where ``allowed``
    may name other arguments as ``{name}``. The message reads ``name=value: must be allowed; ...``;
    ``lines(rename)`` gives the same lines under the caller's names (a training config's
    ``model.num_frame`` for EDVR's ``num_frame``), so each rule is written once, by its owner.
    It is a caller's mistake in code, not a ``UserError``; ``training.validate_config`` reports a
    config's as a ``ConfigError``."""

    def __init__(self, problems: Iterable[tuple[str, Any, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(self.lines()))

    def lines(self, rename: Callable[[str], str] = str) -> list[str]:
        names = _Renamed(rename)
        return [f"{rename(name)}={value!r}: must be {allowed.format_map(names)}"
                for name, value, allowed in self.problems]


class _Renamed(dict):
    def __init__(self, rename: Callable[[str], str]):
        super().__init__()
        self.rename = rename

    def __missing__(self, key: str) -> str:
        return self.rename(key)


def check_arguments(checks: Iterable[tuple[str, Any, bool, str]]) -> None:
    """Raises an ``ArgumentError`` listing each ``(name, value, ok, allowed)`` that is not ``ok``."""
    problems = [(name, value, allowed) for name, value, ok, allowed in checks if not ok]
    if problems:
        raise ArgumentError(problems)


#: What the CLIs report in one line: our errors, and missing or existing paths.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
