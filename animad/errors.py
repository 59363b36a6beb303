"""Exceptions that carry a message meant for the user (printed without a traceback)."""


class UserError(Exception):
    """Something the user can fix: the message names the file or setting and says what to do."""


class ModelFileError(UserError):
    """A model file is missing, truncated, or not the file that was expected."""


class StopRequested(Exception):
    """Training stopped at a step boundary because it was asked to (window closed, SIGTERM)."""
