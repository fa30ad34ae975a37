"""User-facing errors.

Anything a user can fix (a bad file, a wrong band count, a config typo) raises a subclass of
:class:`CromssError` with a message that names the file, key, band or value. The CLI prints the
message without a traceback and exits with status 2. :func:`warn` prints the one-line warnings.
"""

import logging


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


_LOGGER = logging.getLogger("cromss")
_WARNED: set[str] = set()


def warn(message: str, once: bool = True) -> None:
    """One warning line ``cromss: warning: ...`` on the console (the ``cromss`` logger).

    With ``once`` a message is shown once per process (a multi-seed run loads the same weights per seed).
    """
    if once:
        if message in _WARNED:
            return
        _WARNED.add(message)
    _LOGGER.warning("cromss: warning: %s", message)
