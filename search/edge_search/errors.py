"""Errors raised where a problem is detected; the CLI turns them into one line and an exit code."""

from __future__ import annotations


class EdgeSearchError(Exception):
    """A failure the user should read as one line (exit code 1)."""

    exit_code = 1


class InputError(EdgeSearchError):
    """Bad input from the user: a file, a flag, a name (exit code 2)."""

    exit_code = 2


class InvalidConfig(EdgeSearchError):
    """A configuration that cannot be deployed; raised before any work is spent on it."""


class MissingDependency(InputError):
    """An optional back-end is not installed; the message carries the install hint."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'edge-search[{extra}]'")
