"""The project's own exceptions.

Every message is one line that tells the user what went wrong and what to do; the CLI
prints it and exits non-zero, with no traceback unless --debug is given. A batch
catches these per item, records the message and carries on.
"""


class OmniError(Exception):
    """Base class: an expected failure with a user-facing message."""

    exit_code = 1


class InputError(OmniError):
    """The user's input (a file, a folder, a manifest) cannot be used."""

    exit_code = 2


class ModelNotFoundError(OmniError):
    """A model is neither a local path, an installed registry package nor reachable online."""

    exit_code = 3


class ConfigError(OmniError):
    """Options that contradict each other or name something unknown."""

    exit_code = 2


class OutputError(OmniError):
    """A result cannot be written where it was asked to go (a folder where a file should be,
    no permission, a full disk)."""

    exit_code = 74  # EX_IOERR
