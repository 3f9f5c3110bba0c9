"""Which workers are alive, told by the OS: one ``flock``ed file per registered worker.

A worker that registers holds an exclusive ``flock`` on ``<db>-workers/<id>.lock``
for as long as it lives. The kernel drops the lock when the process dies, however
it dies, so another process sees at once that the owner of a ``running`` run is
gone: the lock file is missing or can be locked. ``flock`` locks belong to open
file descriptions, not processes, so two stores in one process see each other as
two processes would (the tests rely on that).

For the same reason a child made by ``fork`` would share the parent's locks and
keep them after the parent died, hiding its death from every other process for
as long as the child lives. So a forked child closes its copies at once: the
locks stay the parent's alone. It finds them in what the stores recorded and,
on Linux, by path in ``/proc/self/fd`` too, so a fork from another thread while
a lock is being taken is covered as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
import weakref

from replay.errors import StoreError

__all__ = ("WorkerLocks",)

#: Every ``WorkerLocks`` of this process, for ``_close_in_child``.
_instances: weakref.WeakSet[WorkerLocks] = weakref.WeakSet()


def _close_in_child() -> None:
    """In a forked child: drop the copies of the parent's lock descriptors, not the locks."""
    directories = set()
    for locks in list(_instances):
        for fd in locks._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)  # the lock lives on in the parent's descriptor
        locks._held.clear()
        directories.add(os.path.realpath(locks.directory))
    if not directories:
        return
    # And those not recorded yet: another thread of the parent was between opening a
    # lock file and recording it (or probing another worker's) when this fork happened.
    for fd in _lock_files_open(directories):
        with contextlib.suppress(OSError):
            os.close(fd)


def _lock_files_open(directories: set[str]) -> list[int]:
    """This process's descriptors open on a lock file in ``directories`` (Linux; elsewhere none)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used, closed since
        target = target.removesuffix(" (deleted)")
        if target.endswith(".lock") and os.path.dirname(target) in directories:
            found.append(int(name))
    return found


os.register_at_fork(after_in_child=_close_in_child)


class WorkerLocks:
    """The lock files of the workers registered through one store.

    Args:
        directory: where lock files live, next to the database.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._held: dict[str, int] = {}  # worker id -> fd holding its lock
        _instances.add(self)

    def path(self, worker_id: str) -> str:
        """The lock file of ``worker_id``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)[:64]
        digest = hashlib.sha256(worker_id.encode()).hexdigest()[:12]
        return os.path.join(self.directory, f"{safe}-{digest}.lock")

    def acquire(self, worker_id: str) -> bool:
        """Take ``worker_id``'s lock for this process; idempotent: whether it was not held here.

        Raises:
            StoreError: a live worker elsewhere holds that id.
        """
        if worker_id in self._held:
            return False
        try:
            self._acquire(worker_id)
        except OSError as exc:
            raise StoreError(f"cannot take the lock of worker {worker_id!r}: {exc}") from None
        return True

    def _acquire(self, worker_id: str) -> None:
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(worker_id)
        busy = 0
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                busy += 1
                if busy > 20:  # longer than any probe holds it: a live worker has this id
                    raise StoreError(
                        f"worker id {worker_id!r} is in use by a live worker ({path} is locked)"
                    ) from None
                time.sleep(0.005)
                continue
            # A prober may have unlinked the file between our open and our lock: then
            # our lock is on a file nobody else can find. Lock the file at the path.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held[worker_id] = fd
                return
            os.close(fd)

    def release(self, worker_id: str) -> None:
        """Drop ``worker_id``'s lock, if this process holds it, and remove its file."""
        fd = self._held.pop(worker_id, None)
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(worker_id))  # still locked by us: nobody else removes it
        os.close(fd)

    def release_all(self) -> None:
        """Drop every lock this store holds (the store closes)."""
        for worker_id in list(self._held):
            self.release(worker_id)

    def alive(self, worker_id: str) -> bool:
        """Whether a live process holds ``worker_id``'s lock."""
        if worker_id in self._held:
            return True
        path = self.path(worker_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # never registered, or unregistered
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            # Free: its process is gone. Remove the stale file while we hold its lock,
            # unless the path already names a newer file (the id registered again).
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
            return False
        finally:
            os.close(fd)
