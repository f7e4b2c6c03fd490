"""A snapshot of the files a command reads, to prove they did not change while it read them.

Packing reads a checkpoint for seconds to minutes. A shard rewritten in place meanwhile (a
download finishing, a training job saving) would give a container that mixes old and new
tensors, each with a correct CRC, so ``verify`` would pass it. Stamping every input before the
first read and comparing after the last one turns that into
:class:`~wstream.errors.SourceModified`, before the output is published.

The stamp is (device, inode, size, mtime_ns, ctime_ns): a rename over the file changes the
inode, a truncation the size, any write the mtime and ctime. ``ctime`` cannot be set back by
``utime`` (it is set to now whenever the mtime is set), so resetting the mtime does not hide a
write. What it cannot see is a change within one tick of the filesystem's clock of the stamp
(ext4 and tmpfs keep nanoseconds, but the kernel updates times at its tick, a few ms); a
checksum of every byte would, at the cost of reading the checkpoint twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from wstream import errors as E


class Stamp(NamedTuple):
    path: Path
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def stamp(path: Path) -> Stamp:
    st = os.stat(path)
    return Stamp(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def snapshot(paths: Iterable[Path]) -> tuple[Stamp, ...]:
    return tuple(stamp(p) for p in paths)


def check_unchanged(before: Iterable[Stamp]) -> None:
    """Raise :class:`~wstream.errors.SourceModified` naming the first file that changed."""
    for old in before:
        try:
            new = stamp(old.path)
        except FileNotFoundError:
            raise E.SourceModified(f"{old.path}: removed while it was being read") from None
        if new != old:
            what = [
                f"{field} {getattr(old, field)} -> {getattr(new, field)}"
                for field in ("ino", "size", "mtime_ns", "ctime_ns")
                if getattr(old, field) != getattr(new, field)
            ]
            raise E.SourceModified(
                f"{old.path}: changed while it was being read ({', '.join(what)}); "
                "nothing was written"
            )
