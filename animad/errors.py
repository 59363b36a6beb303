"""Exceptions that carry a message meant for the user (printed without a traceback)."""

import contextlib
import errno


class UserError(Exception):
    """Something the user can fix: the message names the file or setting and says what to do."""


class ModelFileError(UserError):
    """A model file is missing, truncated, or not the file that was expected."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_is_user_error(fallback_place, then: str):
    """Turn a full disk (or quota) into a UserError that names the file and says what to do next."""
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise UserError(f"disk full while writing {error.filename or fallback_place}. {then}") from None
