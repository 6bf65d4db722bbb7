"""The one error base the user sees: its message names the problem and the fix."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, no model loaded, ...).

    Its message is shown as it is, by the UI and by the API (each translates it in one place), so it
    must say what is wrong and what to do. Anything that is not a UserError is a bug: the front doors
    log it and answer with a generic message.
    """


class GenerationError(UserError, ValueError):
    """Parameters or a prompt that cannot be generated from; the message says what to change."""
