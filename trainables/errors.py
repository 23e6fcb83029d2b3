"""Errors a user can cause from inside the trainables (bad data path, corrupt file, ...).

The CLI turns these into one clear line and a non-zero exit; anything else is a bug and keeps
its traceback.
"""


class UserInputError(Exception):
    """Something the user supplied is wrong; the message says what and what is allowed."""


class DataError(UserInputError):
    """A dataset could not be found, read or split as configured."""
