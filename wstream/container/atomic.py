"""Write a file so that readers see either nothing new or the complete file, never a part.

The bytes go to a temporary file in the target's directory (same filesystem, so the final
rename is atomic); :meth:`AtomicFile.commit` fsyncs it, renames it over the target and fsyncs the
directory. Until then an existing file at the target is untouched, and :meth:`discard` (or
leaving the ``with`` block without committing) removes the temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from wstream.container.scoped import Scoped

Buffer = bytes | bytearray | memoryview


class AtomicFile(Scoped):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self.fd: int = fd
        self.tmp = Path(tmp)
        self.done = False
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; publish like open() would
        except BaseException:
            self.discard()
            raise

    def pwrite_all(self, data: Buffer, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def commit(self) -> None:
        os.fsync(self.fd)  # if this fails, discard() (or the with block) still cleans up
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
