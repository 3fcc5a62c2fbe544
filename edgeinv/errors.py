"""Errors the user can fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or setup. The message names the file and the fix."""
