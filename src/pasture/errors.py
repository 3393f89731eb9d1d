"""The error type every stage raises for bad user input.

The CLI prints these as one line (`pasture: error: ...`) instead of a traceback;
anything else escaping is a bug in pasture and keeps its traceback.
"""


class PastureError(Exception):
    """Bad input a user can fix: a missing file, a malformed config, a corrupt checkpoint."""
