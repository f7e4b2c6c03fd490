"""Paths the caller names: inputs opened only when they are regular files, outputs resolved
against every input before anything is written.

- :func:`open_regular` opens a file to read without ever blocking: ``O_NONBLOCK`` makes the open
  of a FIFO with no writer return at once, and ``fstat`` of the descriptor (not of the path, so
  no rename in between can fool it) refuses anything but a regular file.
- :func:`check_output` refuses an output that is not a regular file (a device node such as
  ``/dev/null``, a FIFO, a directory) or that is one of the inputs: by resolved path, or by
  device and inode (a hard link, a symlink, a bind mount). Nothing is created or touched before
  it passes, so a refused command leaves every file as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from wstream import errors as E

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str], what: str) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (``what`` names it in
    errors: "container", "config.json", ...). Never blocks on a FIFO."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise E.NotRegularFile(
                f"{what}: {os.fspath(path)} is {kind_of(st.st_mode)}, not a regular file"
            )
        os.set_blocking(fd, True)  # no effect on a regular file's reads; restore the default
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular_if_present(path: Path, what: str) -> bool:
    """Whether an optional input (config.json, the shard index) is there: False when nothing is
    at ``path``; True for a regular file; anything else there is an error, not "absent"."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise E.NotRegularFile(f"{what}: {path} is a dangling symbolic link") from None
        return False
    if not stat.S_ISREG(st.st_mode):
        raise E.NotRegularFile(f"{what}: {path} is {kind_of(st.st_mode)}, not a regular file")
    return True


def check_output(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], what: str = "output"
) -> Path:
    """The output path, after refusing one that is not a regular file or that aliases an input.

    An output that does not exist yet must have an existing directory as its parent."""
    out = Path(output)
    resolved = Path(os.path.realpath(out))
    try:
        st: os.stat_result | None = os.stat(out)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise E.NotRegularFile(
            f"{what}: {out} is {kind_of(st.st_mode)}; only a regular file can be replaced"
        )
    if st is None and not resolved.parent.is_dir():
        raise E.InputError(f"{what}: the directory of {out} does not exist")
    for item in inputs:
        src = Path(item)
        try:
            same = st is not None and os.path.samefile(src, out)
        except OSError:
            same = False
        if same or Path(os.path.realpath(src)) == resolved:
            raise E.OutputAliasesInput(
                f"{what}: {out} is the input {src}; writing it would destroy what is being read"
            )
    return out
