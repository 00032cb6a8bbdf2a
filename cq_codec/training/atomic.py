"""Crash-safe files of an experiment folder: atomic writes, one-rename checkpoint directories and
a lock per folder.

- `atomic_write(path)`: the bytes go to a temporary file in the same directory, are fsynced and
  renamed over `path` (then the directory is fsynced), so a reader sees the old file or the new
  one, never a torn one, whatever kills the writer (SIGKILL, full disk, power).
- `atomic_dir(path)`: the same for a directory (a checkpoint): it is filled under a temporary
  name and appears under its final name by one rename.
- `ExperimentLock`: `fcntl.flock` on `<folder>/.lock`, which holds the owner's PID and host. The
  kernel drops the lock when its process dies, however it dies, so a lock file left by a killed
  run is stale by construction and the next run takes it over; a second live run is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import tempfile

__all__ = ["atomic_write", "atomic_dir", "fsync_dir", "ExperimentLock", "ExperimentLocked", "replace_dir"]


def fsync_dir(path: str) -> None:
    """Makes a rename / create / unlink inside `path` durable."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = ""):
    """`with atomic_write(p) as tmp: write(tmp)`: the caller writes the file `tmp` (in the same
    directory, ending in `suffix`, e.g. '.keras' for Keras, which checks the extension); on a
    clean exit it is fsynced and renamed to `path`. On an exception `tmp` is removed and `path`
    is untouched."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=d)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; the file gets the usual mode
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(d)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


@contextlib.contextmanager
def atomic_dir(path: str):
    """`with atomic_dir(p) as tmp: fill(tmp)`: the directory appears as `p` by one rename after
    its files are fsynced. `p` must not exist (checkpoint directories have unique names)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        for name in os.listdir(tmp):
            _fsync_file(os.path.join(tmp, name))
        fsync_dir(tmp)
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)


def replace_dir(src: str, dst: str) -> None:
    """Copies directory `src` to `dst`, replacing any old `dst`, so that `dst` is always either
    the old copy or the complete new one (the old one is renamed away first and removed after)."""
    parent = os.path.dirname(os.path.abspath(dst))
    with atomic_dir(os.path.join(parent, f".{os.path.basename(dst)}.new")) as tmp:
        for name in os.listdir(src):
            shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
    new = os.path.join(parent, f".{os.path.basename(dst)}.new")
    old = os.path.join(parent, f".{os.path.basename(dst)}.old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dst):
        os.rename(dst, old)
    os.rename(new, dst)
    fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


class ExperimentLocked(RuntimeError):
    """Another live run holds the experiment folder."""


class ExperimentLock:
    """An exclusive lock on an experiment folder for the life of the run (see the module doc).
    Re-entrant within a process (main.py's run and the trainer inside it take the same lock)."""

    _held: dict = {}   # lock path -> [fd, depth] of the locks this process holds

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.realpath(os.path.join(folder, ".lock"))
        self._fd = None
        self.stale_owner = None   # what a stale lock file said, when one was taken over

    def acquire(self) -> "ExperimentLock":
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.realpath(os.path.join(self.folder, ".lock"))
        if self.path in self._held:
            self._held[self.path][1] += 1
            self._fd = self._held[self.path][0]
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise ExperimentLocked(
                f"{self.folder} is in use by another run ({owner or 'owner unknown'}; lock file {self.path}). "
                f"Wait for it to finish or stop it, or give this run another --name / --suffix.") from None
        self.stale_owner = _read_owner(fd) or None   # the file outlived its (dead) owner
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        self._held[self.path] = [fd, 1]
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        held = self._held.get(self.path)
        self._fd = None
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del self._held[self.path]
        with contextlib.suppress(OSError):
            os.ftruncate(held[0], 0)
        os.close(held[0])   # closing drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_owner(fd: int) -> str:
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip()
    return ""
