"""Errors that end a job with a clear message instead of a traceback.

Every message names the account and, where there is one, the file or row at fault.
Messages never contain emails or other personal data.
"""


class ClvError(Exception):
    """Base class: the CLI prints the message and exits non-zero."""

    exit_code = 1


class ConfigError(ClvError):
    """Invalid project or account settings."""

    exit_code = 2


class InputError(ClvError):
    """Input data that cannot be used at all (missing file, missing column, no rows)."""

    exit_code = 3


class QuarantineLimitError(InputError):
    """The share of quarantined rows is above the account's limit: nothing is published."""


class ModelError(ClvError):
    """The model could not be fitted or scored."""

    exit_code = 4


class NotEligibleError(ClvError):
    """A refit was asked for an account that is not activated (and not forced)."""

    exit_code = 5
