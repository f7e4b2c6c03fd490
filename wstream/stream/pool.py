"""A byte budget, and the reusable slabs that live inside it.

Everything a stream holds in memory is charged to one :class:`SlabPool`:

- **slabs**: page-aligned anonymous mappings that compressed chunks decode into and widened
  (float32) weights are written to. A released slab stays mapped and idle, so the next chunk of
  a similar size reuses it without page faults; idle slabs are unmapped (their memory really
  returned to the kernel) only when a new reservation would not otherwise fit.
- **mapped bytes**: pages of the container's own mmap that a raw chunk is served from, zero-copy.
  They are charged while the chunk is in use and dropped with ``MADV_DONTNEED`` when released.

The sum of every slab (leased or idle) and every mapped charge never exceeds ``capacity``:
a reservation that does not fit waits for releases, and raises :class:`PoolTimeout` after
``timeout`` seconds; one larger than the whole capacity raises :class:`BudgetTooSmall` at once.
A lease returns its slab exactly once; no slab is ever leased twice at the same time.
Thread-safe: workers acquire, the consumer releases.
"""

from __future__ import annotations

import mmap
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from wstream.errors import BudgetTooSmall, LoaderError, PoolTimeout
from wstream.format.spec import align_up

SLAB_GRANULE = 1 << 16  # slab sizes are rounded up to this, so similar chunks share slabs


@dataclass(eq=False)
class Slab:
    """One anonymous mapping; ``array`` is its bytes as uint8."""

    nbytes: int
    _map: mmap.mmap = field(repr=False)
    array: np.ndarray = field(repr=False)

    @classmethod
    def allocate(cls, nbytes: int) -> Slab:
        # Private (not the module's default shared) anonymous memory, with transparent huge
        # pages asked for: first touch of a fresh slab then faults once per 2 MiB instead of
        # once per 4 KiB, measured 2-4x faster here (a 24 MiB slab: 3-8 ms instead of 14-18).
        m = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                m.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # THP disabled or unsupported: 4 KiB pages still work
                pass
        return cls(nbytes, m, np.frombuffer(m, np.uint8, nbytes))

    def free(self) -> None:
        self.array = np.empty(0, np.uint8)
        try:
            self._map.close()
        except BufferError:
            # A caller still holds a view (a misuse the tests poison against). Drop the pages so
            # the memory is returned anyway; the mapping itself goes when the view does.
            self._map.madvise(mmap.MADV_DONTNEED)


class Lease:
    """Slabs (and a mapped-bytes charge) held by one user until :meth:`release`."""

    __slots__ = ("_pool", "mapped", "released", "sizes", "slabs")

    def __init__(
        self, pool: SlabPool, slabs: list[Slab | None], sizes: tuple[int, ...], mapped: int
    ) -> None:
        self._pool = pool
        self.slabs = slabs  # one per size asked for; None once returned early (or size 0)
        self.sizes = sizes  # bytes the user asked for, per slab
        self.mapped = mapped  # bytes of file mapping charged
        self.released = False

    def array(self, i: int = 0) -> np.ndarray:
        """The first ``sizes[i]`` bytes of slab ``i``, as uint8."""
        if self.sizes[i] == 0:
            return np.empty(0, np.uint8)
        slab = self.slabs[i]
        if slab is None:
            raise LoaderError(f"lease has no slab {i} (size 0, or already returned)")
        return slab.array[: self.sizes[i]]

    def release(self) -> None:
        """Give everything back (idempotent: a second call does nothing)."""
        self._pool._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SlabPool:
    def __init__(
        self, capacity: int | None, *, timeout: float = 60.0, poison: bool = False
    ) -> None:
        """``capacity`` None means unlimited. ``poison`` fills released slabs with NaN bytes
        (0xFF), so tests can prove that nobody reads a chunk after releasing it."""
        self.capacity = capacity
        self.timeout = timeout
        self.poison = poison
        self._cond = threading.Condition()
        self._idle: list[Slab] = []
        self._slab_bytes = 0  # every slab alive, leased or idle
        self._mapped = 0
        self._leases = 0
        self._closed = False
        self.peak = 0  # highest committed bytes seen
        self.slabs_allocated = 0
        self.slabs_reused = 0

    @property
    def committed(self) -> int:
        """Bytes charged right now: all slabs (leased and idle) plus mapped charges."""
        return self._slab_bytes + self._mapped

    @property
    def leased(self) -> int:
        return self._leases

    def _check_fits(self, need: int) -> None:
        if self.capacity is not None and need > self.capacity:
            raise BudgetTooSmall(
                f"budget: a chunk needs {need} bytes but the budget is {self.capacity} bytes"
            )

    @staticmethod
    def cost(*sizes: int, mapped: int = 0) -> int:
        """What a reservation charges against the capacity (slab sizes are rounded up)."""
        return sum(align_up(n, SLAB_GRANULE) for n in sizes) + mapped

    def acquire(
        self, *sizes: int, mapped: int = 0, timeout: float | None = None, block: bool = True
    ) -> Lease | None:
        """Slabs of at least ``sizes`` bytes (0: none) plus a charge of ``mapped`` file bytes,
        all or nothing. With ``block=False`` returns None instead of waiting."""
        self._check_fits(self.cost(*sizes, mapped=mapped))
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                if self._closed:
                    raise LoaderError("pool is closed")
                lease = self._try_acquire(sizes, mapped)
                if lease is not None or not block:
                    return lease
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolTimeout(
                        f"pool: no room for {self.cost(*sizes, mapped=mapped)} bytes within "
                        f"{wait:.1f} s (committed {self.committed} of {self.capacity} bytes)"
                    )
                self._cond.wait(left)

    def _try_acquire(self, sizes: tuple[int, ...], mapped: int) -> Lease | None:
        rounded = [align_up(n, SLAB_GRANULE) for n in sizes]
        slabs = self._fit(rounded, mapped, reuse=True)
        if slabs is None:
            # A reused slab may be larger than needed; fresh exact slabs may still fit.
            slabs = self._fit(rounded, mapped, reuse=False)
        if slabs is None:
            return None
        self._mapped += mapped
        self._leases += 1
        self.peak = max(self.peak, self.committed)
        return Lease(self, slabs, tuple(sizes), mapped)

    def _fit(self, rounded: list[int], mapped: int, *, reuse: bool) -> list[Slab | None] | None:
        taken: list[Slab | None] = []
        for size in rounded:
            slab = None
            if size and reuse:
                # The smallest idle slab that fits and wastes at most half of itself.
                fits = [s for s in self._idle if size <= s.nbytes <= 2 * size]
                if fits:
                    slab = min(fits, key=lambda s: s.nbytes)
                    self._idle.remove(slab)
            taken.append(slab)
        need = mapped + sum(size for size, s in zip(rounded, taken) if s is None)
        if self.capacity is not None:
            # Unmap idle slabs, largest first, until the new charge fits (or none are left).
            while self.committed + need > self.capacity and self._idle:
                victim = max(self._idle, key=lambda s: s.nbytes)
                self._idle.remove(victim)
                self._slab_bytes -= victim.nbytes
                victim.free()
            if self.committed + need > self.capacity:
                self._idle.extend(s for s in taken if s is not None)
                return None
        for i, (size, slab) in enumerate(zip(rounded, taken)):
            if slab is not None:
                self.slabs_reused += 1
            elif size:
                taken[i] = Slab.allocate(size)
                self._slab_bytes += size
                self.slabs_allocated += 1
        return taken

    def _release(self, lease: Lease) -> None:
        with self._cond:
            if lease.released:
                return
            lease.released = True
            self._leases -= 1
            self._mapped -= lease.mapped
            lease.mapped = 0
            for i in range(len(lease.slabs)):
                self._give_back(lease, i)
            self._cond.notify_all()

    def _give_back(self, lease: Lease, i: int) -> None:
        slab, lease.slabs[i] = lease.slabs[i], None
        if slab is None:
            return
        if self.poison:
            slab.array.fill(0xFF)
        if self._closed:
            self._slab_bytes -= slab.nbytes
            slab.free()
        else:
            self._idle.append(slab)

    def return_early(self, lease: Lease, *, slab: int | None = None, mapped: int = 0) -> None:
        """Give back part of a lease before the rest: a temporary slab, or mapped input that a
        decode has finished with."""
        with self._cond:
            if lease.released:
                return
            if slab is not None:
                self._give_back(lease, slab)
            mapped = min(mapped, lease.mapped)
            lease.mapped -= mapped
            self._mapped -= mapped
            self._cond.notify_all()

    def trim(self) -> None:
        """Unmap every idle slab."""
        with self._cond:
            for slab in self._idle:
                self._slab_bytes -= slab.nbytes
                slab.free()
            self._idle.clear()
            self._cond.notify_all()

    def close(self) -> None:
        """Unmap idle slabs now and leased ones as they come back; wake and fail any waiter."""
        with self._cond:
            self._closed = True
        self.trim()
