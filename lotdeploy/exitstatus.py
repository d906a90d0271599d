"""The exit statuses of every lotdeploy command, in one place (documented in the README).

A bottom-layer module (imports nothing of lotdeploy) so any layer can name a status instead of
writing a bare number.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """What a shell, cron job or CI step can rely on."""

    #: Success; for `plan --detailed-exitcode`: no changes.
    OK = 0
    #: Any error a user can cause, usage errors included (one line each, never a traceback).
    ERROR = 1
    #: Changes present (`plan --detailed-exitcode`) or action needed (`certs list`). A usage
    #: error never exits with this, so a typo cannot fake it.
    CHANGES = 2
    #: A bug in lotdeploy (EX_SOFTWARE): the message says so and asks for a report.
    INTERNAL = 70
    #: Interrupted (Ctrl-C) or a prompt was aborted: 128 + SIGINT.
    INTERRUPTED = 130
