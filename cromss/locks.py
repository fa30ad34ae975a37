"""One process per folder: lock files holding the holder's PID and host.

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) that holds
``<pid> <host>``. Used for pretraining run folders, fine-tuning seed folders and experiment cells:
a second process on the same folder stops at once (or, for experiment cells, waits) instead of
interleaving its files with the first one's.

A lock left behind by a process that died (``kill -9``, a node reboot) is taken over when the holder
ran on this host and its PID no longer exists. A lock of another host cannot be checked from here: the
message names it, and it can be deleted by hand once that process is known to be gone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cromss.errors import OutputError

__all__ = ["FolderLock", "LockHeld", "Holder", "read_holder"]


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
        parts = lock.read_text().split()
    except OSError:
        return None
    try:
        pid = int(parts[0]) if parts else 0
    except ValueError:
        return None
    return Holder(pid, parts[1] if len(parts) > 1 else socket.gethostname())


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

    def acquire(self) -> FolderLock:
        """Take the lock or raise LockHeld; OutputError if the lock file cannot be created at all."""
        from cromss.outputs import output_error

        for _ in range(20):  # a takeover race with another process only costs a retry
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is not None and not holder.alive():
                    self._take_over_stale(holder)
                    continue
                if holder is None:  # being written this very moment, or garbage: report as unknown
                    holder = Holder(0, "unknown host")
                raise LockHeld(
                    f"{self.what} {self.folder} is in use by process {holder.pid} on host {holder.host} "
                    f"(lock file {self.path}); wait for it to finish, or delete the lock file if that process "
                    "no longer runs",
                    holder, self.path,
                ) from None
            except OSError as err:
                raise output_error(err, self.path, f"lock file of {self.what}") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()}\n")
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

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held:
            holder = read_holder(self.path)
            if holder is not None and holder.pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
