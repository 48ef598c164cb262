"""Errors a user can act on: each names the file (or config key) and the problem."""

from __future__ import annotations

from pathlib import Path


class MicroalError(Exception):
    """Base class for errors that the CLI prints as one clear line (no traceback)."""


class InputError(MicroalError):
    """A file the user gave us is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # pickled intact across processes (a Ray worker's error reaches the driver)
        return type(self), (self.path, self.problem)


class ConfigError(MicroalError):
    """A config file has an unknown key or a bad value."""
