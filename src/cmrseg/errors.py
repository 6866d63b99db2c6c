"""Errors that reach the user as one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class CmrsegError(Exception):
    """A user-facing error. ``str(err)`` is the single line the CLI prints."""


class InputError(CmrsegError):
    """Bad input data: ``InputError(path, problem)`` prints as ``path: problem``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
