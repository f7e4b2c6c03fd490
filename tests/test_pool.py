"""The slab pool against a plain model: budget never exceeded, no overlap, nothing lost."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from wstream.errors import BudgetTooSmall, LoaderError, PoolTimeout
from wstream.stream.pool import SLAB_GRANULE, Lease, SlabPool

CAPACITY = 8 * SLAB_GRANULE


def _span(a: np.ndarray) -> tuple[int, int]:
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


class PoolMachine(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.pool = SlabPool(CAPACITY, timeout=0.01)
        self.live: dict[int, tuple[Lease, int]] = {}  # id -> (lease, the byte it was filled with)
        self.stamp = 0

    @rule(
        target=leases,
        sizes=st.lists(st.integers(0, 3 * SLAB_GRANULE), min_size=1, max_size=2),
        mapped=st.integers(0, 2 * SLAB_GRANULE),
    )
    def acquire(self, sizes: list[int], mapped: int) -> Lease | None:
        before = self.pool.committed
        lease = self.pool.acquire(*sizes, mapped=mapped, block=False)
        if lease is None:
            # Refused only when it could not fit even after unmapping every idle slab.
            live_slabs = sum(
                s.nbytes for lease_, _ in self.live.values() for s in lease_.slabs if s is not None
            )
            live_mapped = sum(lease_.mapped for lease_, _ in self.live.values())
            assert live_slabs + live_mapped + SlabPool.cost(*sizes, mapped=mapped) > CAPACITY
            assert self.pool.committed <= max(before, CAPACITY)
            return None
        self.stamp = (self.stamp + 1) % 250
        for i, size in enumerate(sizes):
            arr = lease.array(i)
            assert arr.nbytes == size
            arr.fill(self.stamp)
        self.live[id(lease)] = (lease, self.stamp)
        return lease

    @rule(lease=consumes(leases))
    def release(self, lease: Lease | None) -> None:
        if lease is None:
            return
        _, stamp = self.live.pop(id(lease))
        for i in range(len(lease.sizes)):
            if lease.slabs[i] is not None:
                # Nobody else wrote into our slab while we held it.
                assert np.all(lease.array(i) == stamp)
        lease.release()
        lease.release()  # exactly once: the second call changes nothing
        assert lease.released

    @rule(lease=leases)
    def return_temp(self, lease: Lease | None) -> None:
        if lease is None or lease.released or len(lease.sizes) < 2:
            return
        self.pool.return_early(lease, slab=1, mapped=lease.mapped)

    @rule(size=st.integers(1, 2 * SLAB_GRANULE))
    def blocked_acquire_times_out(self, size: int) -> None:
        if self.pool.committed - self._idle_bytes() + SlabPool.cost(size) <= CAPACITY:
            return
        with pytest.raises(PoolTimeout):
            self.pool.acquire(size, timeout=0.001)

    def _idle_bytes(self) -> int:
        return sum(s.nbytes for s in self.pool._idle)

    @invariant()
    def within_budget(self) -> None:
        assert self.pool.committed <= CAPACITY
        assert self.pool.peak <= CAPACITY

    @invariant()
    def count_matches(self) -> None:
        assert self.pool.leased == len(self.live)

    @invariant()
    def no_overlap(self) -> None:
        spans = sorted(
            _span(lease.array(i))
            for lease, _ in self.live.values()
            for i in range(len(lease.sizes))
            if lease.slabs[i] is not None and lease.sizes[i]
        )
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end

    def teardown(self) -> None:
        for lease, _ in list(self.live.values()):
            lease.release()
        self.pool.close()
        # Nothing lost: every byte charged has been returned.
        assert self.pool.committed == 0
        assert self.pool.leased == 0


TestPoolMachine = PoolMachine.TestCase


def test_chunk_larger_than_budget_fails_at_once() -> None:
    pool = SlabPool(SLAB_GRANULE)
    with pytest.raises(BudgetTooSmall, match="budget"):
        pool.acquire(SLAB_GRANULE + 1)


def test_idle_slab_is_reused_not_reallocated() -> None:
    pool = SlabPool(4 * SLAB_GRANULE)
    a = pool.acquire(SLAB_GRANULE)
    assert a is not None
    first = a.slabs[0]
    a.release()
    b = pool.acquire(SLAB_GRANULE - 100)
    assert b is not None and b.slabs[0] is first
    assert pool.slabs_allocated == 1 and pool.slabs_reused == 1


def test_waiting_acquire_wakes_on_release() -> None:
    pool = SlabPool(2 * SLAB_GRANULE, timeout=5)
    held = pool.acquire(2 * SLAB_GRANULE)
    assert held is not None
    threading.Timer(0.05, held.release).start()
    t0 = time.monotonic()
    lease = pool.acquire(SLAB_GRANULE)
    assert lease is not None and time.monotonic() - t0 < 4


def test_close_fails_waiters_and_frees_returned_slabs() -> None:
    pool = SlabPool(SLAB_GRANULE, timeout=5)
    held = pool.acquire(SLAB_GRANULE)
    assert held is not None
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(SLAB_GRANULE)
        except LoaderError as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    pool.close()
    held.release()
    t.join(5)
    assert errors and pool.committed == 0


def test_poisoned_release_overwrites_the_slab() -> None:
    pool = SlabPool(None, poison=True)
    lease = pool.acquire(64)
    assert lease is not None
    view = lease.array().view(np.float32)
    view[:] = 1.0
    lease.release()
    assert np.isnan(view).all()
