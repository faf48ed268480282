"""The one exception type users see.

Contract: every error caused by the user's input (paths, configs, data rows, checkpoints) is raised
as :class:`SpecforgeError` with a message that names the offending thing and says how to fix it.
The CLI prints that message alone, without a traceback, and exits with status 2.
"""

from __future__ import annotations


class SpecforgeError(Exception):
    """A problem with the user's input; the message says what to fix."""
