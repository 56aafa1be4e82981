"""The errors a user can fix.

Every error raised for bad input (a file, a path, a config field, a weight) derives from
``UserError`` and names what is wrong and what was expected. The command lines print such an
error as one ``error: ...`` line and exit with status 2 (``edvr_jax.cli``); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what and where, and what was expected."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this input needs is not installed; the message says how to get it."""


#: What the CLIs report in one line: our errors, and missing or existing paths.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
