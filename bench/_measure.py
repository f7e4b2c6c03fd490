"""Measurement helpers shared by the figure tasks (child side) and the driver (parent side).

Nothing here imports wstream: the driver uses these helpers before and around the fresh
subprocesses that do the measuring, and the children use them after their own imports.

- memory: :func:`status` reads /proc/<pid>/status (VmHWM is the kernel's peak RSS, mapped file
  pages included; RssAnon is private memory); :func:`reset_peak` resets VmHWM to the current RSS
  (``/proc/self/clear_refs`` "5"), so a child can subtract the cost of its own imports.
  :class:`Sampler` polls a child's status from the parent to catch the peak of RssAnon and
  RssFile, which the kernel does not track separately.
- page cache: :func:`drop_cache` (fsync, then ``POSIX_FADV_DONTNEED``) and :func:`resident`
  (``mincore`` through ctypes) to make and prove a cold cache; :func:`warm` reads files through.
- processes: :func:`run_child` runs one task of ``_tasks.py`` in a fresh interpreter and returns
  its JSON answer plus the sampled memory peaks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

MiB = 1 << 20
HERE = Path(__file__).resolve().parent
CHILD = HERE / "_child.py"

# --- /proc --------------------------------------------------------------------------------------

_STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPeak")


def status(pid: int | str = "self") -> dict[str, int]:
    """Memory fields of /proc/<pid>/status, in bytes (missing fields are left out)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in _STATUS_KEYS:
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Sampler:
    """Poll /proc/<pid>/status every ``interval`` seconds; keep the peak of each field."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self.pid = pid
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                s = status(self.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            if "VmRSS" not in s:  # exited, not yet reaped
                return
            self.samples += 1
            self._record(s)
            for k, v in s.items():
                if v > self.peak.get(k, -1):
                    self.peak[k] = v
            time.sleep(self.interval)

    def _record(self, s: dict[str, int]) -> None:
        """Called with each sample (subclasses keep the series)."""

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- page cache ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def files_of(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Regular files among ``paths``, directories expanded one level."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file()))
        elif p.is_file():
            out.append(p)
    return out


def drop_cache(*paths: str | os.PathLike[str]) -> None:
    """Drop files from the page cache: fsync (only clean pages go), then POSIX_FADV_DONTNEED."""
    for p in files_of(paths):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(*paths: str | os.PathLike[str]) -> float:
    """Fraction of the files' pages in the page cache (mincore), by bytes."""
    total = cached = 0
    for p in files_of(paths):
        size = p.stat().st_size
        if size == 0:
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap {p}")
            try:
                pages = -(-size // mmap.PAGESIZE)
                vec = ctypes.create_string_buffer(pages)
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {p}")
                cached += sum(b & 1 for b in vec.raw) * mmap.PAGESIZE
                total += pages * mmap.PAGESIZE
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
    return cached / total if total else 1.0


def read_through(path: str | os.PathLike[str], buf: memoryview) -> int:
    """Read a file front to back into one reused buffer; returns bytes read."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            n += got
    return n


def warm(*paths: str | os.PathLike[str], bufsize: int = 16 * MiB) -> int:
    """Read files through once so they sit in the page cache; returns bytes read."""
    view = memoryview(bytearray(bufsize))
    return sum(read_through(p, view) for p in files_of(paths))


# --- subprocesses -------------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


def run_child(
    task: str,
    args: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 3600.0,
    sample: bool = True,
    pythonpath: str | None = None,
) -> dict[str, Any]:
    """Run ``_tasks.<task>(**args)`` in a fresh interpreter; its JSON result, plus the parent's
    samples of the child's memory under ``"sampled"`` (peak RssAnon, RssFile, VmRSS)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if pythonpath:
        full_env["PYTHONPATH"] = pythonpath + (
            os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else ""
        )
    cmd = [sys.executable, str(CHILD), task, json.dumps(args)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )
    sampler = Sampler(proc.pid) if sample else None
    if sampler is not None:
        sampler.__enter__()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise ChildError(f"{task}: timed out after {timeout} s\n{err[-2000:]}") from None
    finally:
        if sampler is not None:
            sampler.__exit__()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise ChildError(f"{task} {args}: exit {proc.returncode}\n{err[-4000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise ChildError(f"{task}: no JSON result\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_wall_s"] = wall
    if sampler is not None:
        result["sampled"] = dict(sampler.peak, samples=sampler.samples)
    return result


# --- a quiet machine ----------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``interval`` (call it while nothing of ours runs)."""
    b0, t0 = _cpu_times()
    time.sleep(interval)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(max_busy: float = 0.15, timeout: float = 180.0, log: Any = None) -> float:
    """Wait (up to ``timeout`` s) until other processes use less than ``max_busy`` of the CPUs;
    returns the last busy fraction seen (so a figure can say it ran on a busy machine)."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy()
    warned = False
    while busy > max_busy and time.monotonic() < deadline:
        if log is not None and not warned:
            log(
                f"  machine busy ({busy:.0%} of CPUs used by others); waiting up to {timeout:.0f} s"
            )
            warned = True
        time.sleep(2.0)
        busy = cpu_busy()
    return busy


# --- statistics ---------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """'min..max' of the runs, for the tables."""
    return f"{min(xs):.3g}..{max(xs):.3g}"
