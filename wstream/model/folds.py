"""Folds: tensors ``pack --fold`` derives from a checkpoint's own, so the forward does less work.

A fold replaces some of a checkpoint's tensors by tensors derived from them (SPEC.md section 14
records which folds a container holds). The forward detects the derived tensors by name and uses
them, else the originals: one branch per fold (``blockwise.qkv_proj``).

Kept: ``qkv``, every attention layer's q, k and v projections (vision tower and decoder, the
decoder's GQA k/v included) stacked into one ``self_attn.qkv_proj`` matrix and bias, so three
products are one (0.49-0.89x the matmul time, bench/results/QUANT.md section 4).

Measured and dropped (bench/results/FOLD.md; the code is at commit 0c844bc): ``gate_up``
(gate and up stacked: no gain in the kernels, none resolved end to end), ``resampler_query``
(LN_q(query) and its in-projection precomputed: no gain resolved at the resampler stage) and the
norm-affine fold (its bound, skipping every affine step, was not resolved end to end either,
and folding gamma into bf16 weights would round every weight a second time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wstream.errors import InputError

QKV = "qkv"
# every kept fold, in the order ``all`` applies them
FOLDS: tuple[str, ...] = (QKV,)

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
    """A tensor a fold stores in place of source tensors: rows of source tensors stacked along
    the first axis (the bytes are copied, so nothing is rounded; a fold that computes values
    would compute them in float64 and round once, SPEC.md section 14.2)."""

    name: str
    shape: tuple[int, ...]
    stack: tuple[RowSlice, ...]


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


_PLANNERS = {QKV: _qkv}


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
    return (QKV,) if any(n.endswith("." + QKV_WEIGHT) for n in names) else ()


def folded_shapes(
    shapes: Mapping[str, tuple[int, ...]], names: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """The tensors a checkpoint of ``shapes`` holds once packed with the folds ``names`` show."""
    folds = detect(names)
    return plan_folds(folds, shapes, strict=False).shapes(shapes) if folds else dict(shapes)
