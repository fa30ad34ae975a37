"""Reading the text files cromss is given: one helper, one-line errors naming the file.

Every text file cromss reads (``--config`` YAML, ``dataset.yaml``, ``samples.csv``, a ``--classes``
CSV, band statistics and other JSON files, checksum lists, run files) goes through
:func:`read_text`, :func:`read_json` or :func:`read_yaml_text`:

* the bytes are decoded as UTF-8; a byte-order mark (Excel's "CSV UTF-8", Notepad's "UTF-8 with BOM")
  is accepted and dropped;
* text that is not UTF-8 (a Latin-1 / Windows-1252 export, a binary file given by mistake) is
  refused with one line naming the file, the line and the first bad byte, never a
  ``UnicodeDecodeError`` traceback; nothing is guessed (a guessed code page would silently turn
  class names or band names into other strings);
* a missing or unreadable file, and (for JSON / YAML) a syntax error, are one line naming the file too.

The error class is the caller's (``DataError`` for data files, ``ConfigError`` for configs).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from cromss.errors import CromssError, DataError

__all__ = ["decode_text", "read_json", "read_text", "read_yaml_text"]


def decode_text(data: bytes, path: str | Path, what: str = "file", error: type[CromssError] = DataError) -> str:
    """``data`` (the bytes of ``path``) as text: UTF-8, with or without a byte-order mark."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(
            f"{what} {path} is not UTF-8 text (line {line}: byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8 (in Excel: 'CSV UTF-8'; iconv -f latin1 -t utf-8 converts a Latin-1 file)"
        ) from None


def read_text(path: str | Path, what: str = "file", error: type[CromssError] = DataError) -> str:
    """The text of ``path`` (see the module docstring); ``error`` names the file when it cannot be read."""
    from cromss.outputs import os_error_cause

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {os_error_cause(err)}") from None
    return decode_text(data, path, what, error)


def read_json(path: str | Path, what: str = "JSON file", error: type[CromssError] = DataError) -> Any:
    """The JSON value of ``path``; a syntax error is one line with its line and column."""
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def read_yaml_text(path: str | Path, what: str = "YAML file", error: type[CromssError] = DataError) -> Any:
    """The YAML value of ``path`` (safe loader: tags such as ``!!python/object`` are refused)."""
    import yaml

    text = read_text(path, what, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
