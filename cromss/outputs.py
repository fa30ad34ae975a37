"""Output locations: checked before work starts, written atomically, readable by the team, errors in one line.

* :func:`prepare_output_dir` creates an output folder or says in one line why it cannot (a path component
  is a file, read-only, no space); it is called before any computation.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` write ``<file>.tmp`` + fsync + :func:`os.replace`:
  an interrupted or failed write leaves the previous file intact. The new file gets the usual
  ``0666 & ~umask`` permissions (0644 with the common umask 022), unlike :mod:`tempfile` and
  safetensors' own writer, which create 0600 files nobody else on a shared cluster can read.
* :func:`check_output_file` is the one rule for an output file of a command: refused when it exists
  (unless ``--overwrite``), is a folder, or is the same file as another output of that command.
* :func:`output_error` turns an :class:`OSError` into :class:`~cromss.errors.OutputError` naming the
  path and the cause (the CLI prints it as one line, exit status 2); :func:`writing` does it for a block.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cromss.errors import OutputError

__all__ = ["TEMP_SUFFIX", "atomic_write_bytes", "atomic_write_text", "check_output_file", "os_error_cause", "os_error_in",
           "output_error", "prepare_output_dir", "refuse_existing", "shared_file_mode", "writing"]

#: Suffix of the temporary file written before the rename.
TEMP_SUFFIX = ".tmp"

#: Plain words for the causes users meet on clusters (the OS text is kept after them).
_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (read-only location?)",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large (a file size limit, see 'ulimit -f')",
    errno.ENOTDIR: "a component of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "it exists and is not a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def shared_file_mode() -> int:
    """``0o666 & ~umask``: the permissions a plain ``open(path, 'w')`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def os_error_cause(err: OSError) -> str:
    """Plain-words cause of ``err`` (with the OS text), e.g. 'no space left on the device'."""
    cause = _CAUSES.get(err.errno or -1)
    text = err.strerror or (str(err).splitlines() or [""])[0] or type(err).__name__
    if cause is None:
        return text
    return cause if text.lower() in cause.lower() else f"{cause}: {text}"


def output_error(err: OSError, path: str | Path, what: str = "output") -> OutputError:
    """One-line :class:`OutputError` for ``err`` raised while writing ``what`` at ``path``."""
    cause = os_error_cause(err)
    where = Path(err.filename) if getattr(err, "filename", None) else Path(path)
    if str(where).endswith(TEMP_SUFFIX):  # the user knows the real name, not our temporary one
        where = Path(str(where)[: -len(TEMP_SUFFIX)])
    detail = "" if where == Path(path) else f" (at {where})"
    return OutputError(f"cannot write {what} {path}{detail}: {cause}")


def os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError that ``err`` is or was raised while handling (torch's zip writer turns an EFBIG from
    ``write`` into ``RuntimeError: unexpected pos ...`` in its cleanup), else None."""
    from cromss.errors import CromssError

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, CromssError):  # already a user-facing message
            return None
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


@contextmanager
def writing(path: str | Path, what: str = "output") -> Iterator[None]:
    """Turn an :class:`OSError` inside the block into :func:`output_error` for ``path``."""
    try:
        yield
    except Exception as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        raise output_error(cause, path, what) from None


def prepare_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents) or raise OutputError saying why it cannot be used.

    Called before any work starts, so a wrong ``--out`` / ``output_dir`` costs a second, not a night.
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(
                f"cannot use {what} {path}: {parent} is a file, not a folder"
                if parent != path else f"cannot use {what} {path}: it is a file, not a folder"
            )
        if parent.is_dir():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(err, path, what) from None
    if not os.access(path, os.W_OK | os.X_OK):
        if _read_only_mount(path):
            raise OutputError(f"cannot write {what} {path}: read-only file system")
        raise OutputError(f"cannot write {what} {path}: permission denied (read-only location?)")
    return path


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def refuse_existing(path: str | Path, what: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Raise OutputError if ``path`` exists and ``overwrite`` is false (nothing is ever replaced silently)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{what} {path} already exists: pass {flag} to replace it, or choose another path")


def check_output_file(path: str | Path, what: str, overwrite: bool = False,
                      others: dict[str, str | Path | None] | None = None, flag: str = "--overwrite") -> Path:
    """THE rule for an output file of a command (``predict --out``, ``report --out``, ``export-encoder``, ...).

    Checked before any work starts: ``path`` must not be a folder, its parent chain must not go through a
    file, an existing file is refused unless ``overwrite`` (``flag`` names the option), and it must not be
    the same file as another output of the same command (``others``: what -> path, e.g.
    ``{"--out": out}`` for ``--probabilities``). Returns ``path``. The file itself is then written
    atomically (:func:`atomic_write_bytes`, or ``<file>.tmp`` + rename), so a failed run leaves an earlier
    file at ``path`` intact.
    """
    path = Path(path)
    for label, other in (others or {}).items():
        if other is not None and _same_file(path, Path(other)):
            raise OutputError(f"{what} {path} is the same file as {label} {other}: give each output its own path")
    if path.is_dir():
        raise OutputError(f"cannot use {what} {path}: it is a folder, not a file")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot use {what} {path}: {parent} is a file, not a folder")
        if parent.is_dir():
            break
    refuse_existing(path, what, overwrite, flag)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` through ``<path>.tmp`` + fsync + rename, with permissions ``0666 & ~umask``.

    On any error the temporary file is removed, an earlier ``path`` is left untouched and OutputError
    names the path and the cause. Returns ``path``.
    """
    path = Path(path)
    temp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:  # open() applies the umask: 0644 with umask 022
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as err:
        _remove_quietly(temp)
        cause = os_error_in(err)
        if cause is not None:
            raise output_error(cause, path, what) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
