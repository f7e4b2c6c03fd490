"""Folds: tensors ``pack --fold`` computes from a checkpoint's own, so the forward does less work.

A fold replaces some of a checkpoint's tensors by tensors derived from them (SPEC.md section 14
records which folds a container holds). The forward detects the derived tensors by name and uses
them, else the originals: one branch per fold, in :mod:`wstream.model.blockwise` and the
resampler. Each derived tensor is computed in float64 from the source values and rounded once to
its stored dtype (a stack of rows involves no arithmetic at all).

Kept, because they measured faster end to end on this machine (bench/results/FOLD.md):

- ``qkv``: every attention layer's q, k and v projections (vision tower and decoder, the
  decoder's GQA k/v included) stacked into one ``self_attn.qkv_proj`` matrix and bias, so the
  three products are one.

Dropped after measuring (bench/results/FOLD.md): gate/up stacking, norm-affine folding and the
resampler's constant query path; they are not offered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from wstream.errors import InputError
from wstream.model.config import RESAMPLER_EPS

QKV = "qkv"
GATE_UP = "gate_up"
RESAMPLER_QUERY = "resampler_query"
# every kept fold, in the order ``all`` applies them
FOLDS: tuple[str, ...] = (QKV, GATE_UP, RESAMPLER_QUERY)
GATE_UP_WEIGHT = "mlp.gate_up_proj.weight"  # rows [gate; up]
# The resampler's constant query path, local to "resampler.": Q = LN_q(query) @ Wq.T + bq
# [queries, D], and the k/v rows [D, 3D) of the packed in-projection that remain.
QUERY_PROJ = "query_proj"
IN_PROJ_KV_WEIGHT = "attn.in_proj_kv_weight"
IN_PROJ_KV_BIAS = "attn.in_proj_kv_bias"

# The fused q/k/v tensors, local to a layer's prefix: rows [q; k; v].
QKV_WEIGHT = "self_attn.qkv_proj.weight"
QKV_BIAS = "self_attn.qkv_proj.bias"
_QKV_PARTS = ("q_proj", "k_proj", "v_proj")
_ATTENTION_PREFIXES = ("vpm.encoder.layers.", "llm.model.layers.")


@dataclass(frozen=True, slots=True)
class RowSlice:
    """Rows [start, stop) of a source tensor."""

    name: str
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Derived:
    """A tensor a fold stores in place of source tensors.

    Either ``stack`` (rows of source tensors, stacked along the first axis: the bytes are copied,
    nothing is rounded) or ``compute`` (the whole tensor in float64 from the float64 values of
    ``inputs``, rounded once when stored)."""

    name: str
    shape: tuple[int, ...]
    stack: tuple[RowSlice, ...] = ()
    inputs: tuple[RowSlice, ...] = ()
    compute: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None


@dataclass(frozen=True, slots=True)
class FoldPlan:
    """What the folds do to one checkpoint: the tensors added and the tensors they replace."""

    folds: tuple[str, ...]  # applied, in FOLDS order
    derived: tuple[Derived, ...]
    removed: frozenset[str]

    def shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """``shapes`` (name -> shape of the source tensors) with the folds applied."""
        out = {n: s for n, s in shapes.items() if n not in self.removed}
        out.update({d.name: d.shape for d in self.derived})
        return out


def parse_folds(value: str) -> tuple[str, ...]:
    """``--fold`` LIST (comma-separated) -> fold names in FOLDS order; ``all`` is every kept
    fold. A bad name is an :class:`InputError`."""
    if value == "all":
        return FOLDS
    names = [n.strip() for n in value.split(",")]
    for n in names:
        if n not in FOLDS:
            raise InputError(
                f"fold: {n!r} is not a fold; expected 'all' or a comma-separated list of "
                f"{', '.join(FOLDS)}"
            )
    if len(set(names)) != len(names):
        raise InputError(f"fold: {value!r} names a fold twice")
    return tuple(f for f in FOLDS if f in names)


def _qkv(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[Derived, tuple[str, ...]]]:
    """One fused weight (and bias) per attention layer whose q, k, v all share their input."""
    out = []
    for name in shapes:
        if not (name.startswith(_ATTENTION_PREFIXES) and name.endswith(".self_attn.q_proj.weight")):
            continue
        prefix = name[: -len("q_proj.weight")]  # "...layers.N.self_attn."
        weights = [f"{prefix}{p}.weight" for p in _QKV_PARTS]
        biases = [f"{prefix}{p}.bias" for p in _QKV_PARTS]
        if not all(w in shapes and len(shapes[w]) == 2 for w in weights):
            continue
        if len({shapes[w][1] for w in weights}) != 1:
            continue  # different inputs: nothing to stack
        has_bias = [b in shapes for b in biases]
        if any(has_bias) and not all(has_bias):
            continue  # a bias on some only: the fused product could not add one bias
        layer = prefix[: -len("self_attn.")]
        groups = [(weights, layer + QKV_WEIGHT)]
        if all(has_bias):
            groups.append((biases, layer + QKV_BIAS))
        for parts, fused in groups:
            rows = sum(shapes[p][0] for p in parts)
            stack = tuple(RowSlice(p, 0, shapes[p][0]) for p in parts)
            out.append((Derived(fused, (rows, *shapes[parts[0]][1:]), stack), tuple(parts)))
    return out


def _gate_up(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[Derived, tuple[str, ...]]]:
    out: list[tuple[Derived, tuple[str, ...]]] = []
    for name in shapes:
        if not (name.startswith("llm.model.layers.") and name.endswith(".mlp.gate_proj.weight")):
            continue
        layer = name[: -len("mlp.gate_proj.weight")]
        parts = (name, layer + "mlp.up_proj.weight")
        if parts[1] not in shapes or shapes[parts[0]] != shapes[parts[1]]:
            continue
        rows, cols = shapes[name]
        stack = tuple(RowSlice(p, 0, rows) for p in parts)
        out.append((Derived(layer + GATE_UP_WEIGHT, (2 * rows, cols), stack), parts))
    return out


def query_proj(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """LN_q(query) @ Wq.T + bq in float64, Wq and bq the first D rows of the in-projection.
    (query [Q, D], ln_q weight [D], ln_q bias [D], Wq [D, D], bq [D]) -> [Q, D]"""
    query, gamma, beta, w, b = (np.asarray(a, np.float64) for a in inputs)
    c = query - query.mean(axis=-1, keepdims=True)  # [Q, D]
    q = c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + RESAMPLER_EPS) * gamma + beta
    out: np.ndarray = q @ w.T + b  # [Q, D]
    return out


def _resampler_query(
    shapes: Mapping[str, tuple[int, ...]],
) -> list[tuple[Derived, tuple[str, ...]]]:
    p = "resampler."
    inputs = tuple(p + n for n in ("query", "ln_q.weight", "ln_q.bias"))
    inputs += (p + "attn.in_proj_weight", p + "attn.in_proj_bias")
    if not all(n in shapes for n in inputs) or len(shapes[inputs[0]]) != 2:
        return []
    queries, dim = shapes[inputs[0]]
    if shapes[inputs[3]] != (3 * dim, dim) or shapes[inputs[4]] != (3 * dim,):
        return []
    w, b = inputs[3], inputs[4]
    rows = [RowSlice(n, 0, shapes[n][0]) for n in inputs[:3]] + [
        RowSlice(w, 0, dim),
        RowSlice(b, 0, dim),
    ]
    q = Derived(p + QUERY_PROJ, (queries, dim), inputs=tuple(rows), compute=query_proj)
    return [
        (q, inputs[:3]),
        (Derived(p + IN_PROJ_KV_WEIGHT, (2 * dim, dim), (RowSlice(w, dim, 3 * dim),)), (w,)),
        (Derived(p + IN_PROJ_KV_BIAS, (2 * dim,), (RowSlice(b, dim, 3 * dim),)), (b,)),
    ]


_PLANNERS = {QKV: _qkv, GATE_UP: _gate_up, RESAMPLER_QUERY: _resampler_query}


def plan_folds(
    folds: Sequence[str], shapes: Mapping[str, tuple[int, ...]], *, strict: bool = True
) -> FoldPlan:
    """The derived tensors of ``folds`` over a checkpoint with these tensor shapes.

    With ``strict`` a fold that finds nothing to fold is an :class:`InputError`; without, it is
    left out of the plan (``--fold all`` on a checkpoint some folds do not fit)."""
    derived: list[Derived] = []
    removed: set[str] = set()
    applied = []
    for fold in folds:
        found = _PLANNERS[fold](shapes)
        if not found:
            if not strict:
                continue
            raise InputError(f"fold: {fold!r} finds nothing to fold in this checkpoint")
        applied.append(fold)
        for d, parts in found:
            derived.append(d)
            removed.update(parts)
    return FoldPlan(tuple(applied), tuple(derived), frozenset(removed))


def detect(names: Sequence[str] | frozenset[str]) -> tuple[str, ...]:
    """The folds whose derived tensors ``names`` (a container's tensors) hold."""
    ends = {QKV: "." + QKV_WEIGHT, GATE_UP: "." + GATE_UP_WEIGHT}
    found = {f for f in ends if any(n.endswith(ends[f]) for n in names)}
    if "resampler." + QUERY_PROJ in names:
        found.add(RESAMPLER_QUERY)
    return tuple(f for f in FOLDS if f in found)


def folded_shapes(
    shapes: Mapping[str, tuple[int, ...]], names: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """The tensors a checkpoint of ``shapes`` holds once packed with the folds ``names`` show."""
    folds = detect(names)
    return plan_folds(folds, shapes, strict=False).shapes(shapes) if folds else dict(shapes)
