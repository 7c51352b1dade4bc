"""Errors that report a problem with the user's input (files, config keys, elements).

The CLI catches :class:`InputError`, prints ``str(error)`` (one line, naming the file,
key, element or atom at fault) without a traceback and exits with a non-zero status.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with user input, described in one clear line.

    The message is collapsed onto a single line so that it can be printed as is,
    e.g. ``data/x.xyz: frame 7 has no forces (key 'forces') but forces_weight > 0``.
    """

    def __init__(self, message: str) -> None:
        message = " ".join(str(message).split())
        super().__init__(message)

    def __str__(self) -> str:  # noqa: D105 - always the one-line message
        return str(self.args[0]) if self.args else ""
