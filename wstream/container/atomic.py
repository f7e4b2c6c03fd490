"""Write a file so that readers see either nothing new or the complete file, never a part.

The bytes go to a temporary file in the target's directory (same filesystem, so the final
rename is atomic); :meth:`AtomicFile.commit` fsyncs it, renames it over the target and fsyncs the
directory. Until then an existing file at the target is untouched, and :meth:`discard` (or
leaving the ``with`` block without committing) removes the temporary file.

A process killed before either (SIGKILL, a power cut) cannot clean up, so the temporary file is
named to be recognised later, ``.NAME.wstream-PID-RANDOM.tmp``, and its writer holds an
exclusive ``flock`` on it while it lives. The next :class:`AtomicFile` for the same target
removes every such file whose lock it can take (its writer is dead: the kernel drops a lock with
its last descriptor, however the process ended) and whose writer's pid is gone, or which has not
been written for :data:`STALE_SECONDS`. A live writer's file, in this process or another, is
never touched. A write that fails (disk full, file too large) raises
:class:`~wstream.errors.WriteFailed` naming the target.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import time
from pathlib import Path

from wstream import errors as E
from wstream.container.scoped import Scoped

Buffer = bytes | bytearray | memoryview

STALE_SECONDS = 600.0  # an unlocked temporary file not written for this long is abandoned


def temp_name(target: Path) -> str:
    """The name of a temporary file for ``target``: recognisable, with its writer's pid."""
    return f".{target.name}.wstream-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.wstream-(\d+)-[0-9a-f]+\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a nonsense pid): assume it lives
    return True


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove abandoned temporary files of earlier writes to ``target``; returns them."""
    target = Path(target)
    pattern = _temp_pattern(target)
    removed: list[Path] = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        path = target.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # its writer holds the lock: alive
                # No locks on this filesystem: judge by the pid and the age alone.
            age = time.time() - os.fstat(fd).st_mtime
            if _pid_alive(int(m.group(1))) and age < STALE_SECONDS:
                continue  # just created and not yet locked, or a pid reused: leave it
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _write_error(path: Path, exc: OSError) -> E.WriteFailed:
    return E.WriteFailed(f"{path}: cannot write ({exc.strerror or exc})")


class AtomicFile(Scoped):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        remove_stale_temps(self.path)
        self.tmp = self.path.parent / temp_name(self.path)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.tmp, flags, 0o666)  # the umask applies, as for open()
        self.fd: int = fd
        self.done = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "alive" to remove_stale_temps
        except OSError:
            pass  # no locks here (some network filesystems): the pid and age still protect it

    def pwrite_all(self, data: Buffer, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as exc:  # ENOSPC, EFBIG, EIO: name the file, not a bare errno
                raise _write_error(self.path, exc) from None
            view, offset = view[n:], offset + n

    def truncate(self, size: int) -> None:
        """Set the temporary file's size (a failure names the target)."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise _write_error(self.path, exc) from None

    def commit(self) -> None:
        try:
            os.fsync(self.fd)  # if this fails, discard() (or the with block) still cleans up
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        os.close(self.fd)
        self.done = True
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)  # the target, if any, is untouched
            raise
        _fsync_dir(self.path.parent)

    def _on_exit(self) -> None:
        self.discard()  # never committed: the target is left as it was

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        os.close(self.fd)
        self.tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)
