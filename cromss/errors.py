"""User-facing errors.

Anything a user can fix (a bad file, a wrong band count, a config typo) raises a subclass of
:class:`CromssError` with a message that names the file, key, band or value. The CLI prints the
message without a traceback and exits with status 2.
"""


class CromssError(Exception):
    """Base class of errors caused by user input, not by a bug in cromss."""


class DataError(CromssError):
    """A data file, key, band or value is missing, corrupt or inconsistent."""


class ConfigError(CromssError):
    """A config key is unknown, of the wrong type or has an impossible value."""


class CheckpointError(CromssError):
    """A checkpoint or weight file cannot be used (unknown layout, mismatched bands, unsafe)."""


class OutputError(CromssError):
    """An output location cannot be written (not a folder, read-only, full, too large) or is in use."""
