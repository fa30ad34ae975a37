"""One process per folder: lock files holding the holder's PID and host.

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) that holds
``<pid> <host>``. Used for pretraining run folders, fine-tuning seed folders and experiment cells:
a second process on the same folder stops at once (or, for experiment cells, waits) instead of
interleaving its files with the first one's.

A lock left behind by a process that died (``kill -9``, a node reboot) is taken over when the holder
ran on this host and its PID no longer exists. A lock of another host cannot be checked from here: the
message names it, and it can be deleted by hand once that process is known to be gone.

The holder also keeps an ``flock`` on the open lock file for as long as it holds the lock. That makes a
lock whose content cannot be read (empty after a crash between create and write or a full disk,
garbage, not text) decidable too: when no process holds the ``flock`` and the file is older than
:data:`UNREADABLE_GRACE_S` (no writer can still be between its create and its write), its owner cannot
be alive and the lock is taken over with a warning; while the ``flock`` is held (the owner is alive),
or when the file system cannot tell (no ``flock`` support), the lock still blocks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cromss.errors import OutputError

__all__ = ["FolderLock", "LockHeld", "Holder", "read_holder"]

LOGGER = logging.getLogger("cromss.locks")
#: Age (seconds) after which an unreadable lock file that nobody holds is stale: a live writer puts
#: its PID in right after creating the file.
UNREADABLE_GRACE_S = 2.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lock."""

    pid: int
    host: str

    def alive(self) -> bool:
        """False only when the holder ran on this host and its PID is gone (the lock is stale)."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            return True
        return True


class LockHeld(OutputError):
    """The folder is locked by another live process."""

    def __init__(self, message: str, holder: Holder, lock: Path) -> None:
        super().__init__(message)
        self.holder = holder
        self.lock = lock


def read_holder(lock: Path) -> Holder | None:
    """The holder written in ``lock`` (``<pid> [<host>]``; a bare PID means this host), None if unreadable."""
    try:
        parts = lock.read_bytes().decode("utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        pid = int(parts[0]) if parts else 0
    except ValueError:
        return None
    if pid <= 0:
        return None
    return Holder(pid, parts[1] if len(parts) > 1 else socket.gethostname())


def _flock_state(lock: Path) -> str:
    """'free' (no process holds an flock on ``lock``), 'held', 'gone' (no file) or 'unknown' (no flock here)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)  # also drops the probe's flock
    return "free"


class FolderLock:
    """Exclusive lock file ``path`` for ``folder``; ``with FolderLock(...)`` or :meth:`acquire` / :meth:`release`.

    :meth:`acquire` raises :class:`LockHeld` (one line naming the holder's PID and host) when another
    live process holds the lock, and takes a stale one over.
    """

    def __init__(self, path: str | Path, folder: str | Path | None = None, what: str = "folder") -> None:
        self.path = Path(path)
        self.folder = Path(folder) if folder is not None else self.path.parent
        self.what = what
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock or raise LockHeld; OutputError if the lock file cannot be created at all."""
        from cromss.outputs import output_error

        deadline = time.monotonic() + UNREADABLE_GRACE_S + 1.0
        for _ in range(200):  # a takeover race with another process only costs a retry
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is not None and not holder.alive():
                    self._take_over_stale(holder)
                    continue
                if holder is None:
                    state = self._unreadable_state()
                    if state == "stale":
                        self._take_over_unreadable()
                        continue
                    if state == "young" and time.monotonic() < deadline:
                        time.sleep(0.1)  # its writer may be between create and write: look again
                        continue
                    raise LockHeld(
                        f"{self.what} {self.folder} is in use (lock file {self.path} holds no readable PID and "
                        + ("a live process holds it" if state == "held" else
                           "this file system cannot tell whether its owner is alive" if state == "unknown" else
                           "it was written just now")
                        + "); wait for it to finish, or delete the lock file if no cromss process works there",
                        Holder(0, "unknown host"), self.path,
                    ) from None
                raise LockHeld(
                    f"{self.what} {self.folder} is in use by process {holder.pid} on host {holder.host} "
                    f"(lock file {self.path}); wait for it to finish, or delete the lock file if that process "
                    "no longer runs",
                    holder, self.path,
                ) from None
            except OSError as err:
                raise output_error(err, self.path, f"lock file of {self.what}") from None
            try:
                # the flock lives as long as this process holds the lock: proof of life that does not
                # depend on the file's content
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pass  # no flock on this file system: the PID and host in the file still decide
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            except OSError as err:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise output_error(err, self.path, f"lock file of {self.what}") from None
            self._fd = fd
            self.held = True
            return self
        raise OutputError(f"cannot take the lock {self.path}: it keeps changing hands")

    def _take_over_stale(self, holder: Holder) -> None:
        # rename first: of two processes taking over the same stale lock only one rename succeeds,
        # and the loser never deletes a fresh lock that the winner created meanwhile
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_holder(aside)
        if moved != holder and not self.path.exists():  # we moved a live lock: put it back
            os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)

    def _unreadable_state(self) -> str:
        """For a lock file without a readable PID: 'stale', 'young', 'held' or 'unknown'."""
        state = _flock_state(self.path)
        if state == "gone":
            return "young"  # removed meanwhile: simply try again
        if state != "free":
            return state
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "young"
        return "stale" if age >= UNREADABLE_GRACE_S else "young"

    def _take_over_unreadable(self) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            content = self.path.read_bytes()[:40]
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if read_holder(aside) is not None or _flock_state(aside) == "held":  # a fresh lock moved: put it back
            if not self.path.exists():
                os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)
        LOGGER.warning("cromss: warning: lock file %s held no readable PID (%r) and no live process holds it: "
                       "taken over", self.path, content)

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held:
            holder = read_holder(self.path)
            if holder is not None and holder.pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
