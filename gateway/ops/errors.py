"""The errors a ``gatewayctl`` command reports in one line, wherever the command is written."""

from __future__ import annotations

__all__ = ["CommandError", "Failed"]


class CommandError(Exception):
    """A problem to report in one line, exit status 2 (or ``status``)."""

    status = 2


class Failed(CommandError):
    """A check that ran and found problems: exit status 1."""

    status = 1
