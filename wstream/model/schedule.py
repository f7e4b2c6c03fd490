"""Execution order: the single definition of which tensors form which group, in which order.

Both the pack tool (which lays chunks out on disk) and the forward pass (which asks for them)
call :func:`execution_order`, so the file order *is* the order of computation and a streaming
reader only ever moves forward through the file.

A *group* is the unit the forward consumes at once (one vision block, the resampler, one decoder
layer, ...). Its tensors are listed as *items*: tuples of tensor names that are split into row
blocks together when they do not fit one chunk. Items pair what the forward needs side by side:
a weight with its bias (``y[:, r0:r1] = x @ W[r0:r1].T + b[r0:r1]``) and SwiGLU's gate with its
up projection (``act[:, r0:r1] = silu(x @ G[r0:r1].T) * (x @ U[r0:r1].T)``), so a block of rows is
usable the moment its chunk arrives.

MiniCPM-V 2.6 names (``vpm.*``, ``resampler.*``, ``llm.*``) get the model's real order; any other
checkpoint gets a generic order: tensors without a layer index first (sorted by name), then one
group per ``<prefix>.<index>`` in natural order (``layers.2`` before ``layers.10``).

Group names are ``<stage>.<part>``; the stage (``vision``, ``resampler``, ``llm``, ``model``) is
the first dot-separated component, which is what lets the loader touch a stage only when it runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from wstream.format.manifest import stage_of
from wstream.model.folds import QKV_BIAS, QKV_WEIGHT

Item = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScheduledGroup:
    """One group of the execution order."""

    name: str  # "vision.layer.3": unique, "<stage>.<part>"
    prefix: str  # "vpm.encoder.layers.3.": local name = full name minus this prefix
    items: tuple[Item, ...]  # tensors in the order the forward consumes them

    @property
    def stage(self) -> str:
        return stage_of(self.name)

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(name for item in self.items for name in item)


# --- MiniCPM-V 2.6 -------------------------------------------------------------------------------
# Local names in consumption order. A tuple is split into row blocks together.

VISION_EMBED: tuple[Item, ...] = (
    ("patch_embedding.weight", "patch_embedding.bias"),
    ("position_embedding.weight",),
)
VISION_LAYER: tuple[Item, ...] = (
    ("layer_norm1.weight", "layer_norm1.bias"),
    ("self_attn.q_proj.weight", "self_attn.q_proj.bias"),
    ("self_attn.k_proj.weight", "self_attn.k_proj.bias"),
    ("self_attn.v_proj.weight", "self_attn.v_proj.bias"),
    ("self_attn.out_proj.weight", "self_attn.out_proj.bias"),
    ("layer_norm2.weight", "layer_norm2.bias"),
    ("mlp.fc1.weight", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.bias"),
)
VISION_POST: tuple[Item, ...] = (("weight", "bias"),)
RESAMPLER: tuple[Item, ...] = (
    ("kv_proj.weight",),
    ("ln_kv.weight", "ln_kv.bias"),
    ("query",),
    ("ln_q.weight", "ln_q.bias"),
    ("attn.in_proj_weight", "attn.in_proj_bias"),
    ("attn.out_proj.weight", "attn.out_proj.bias"),
    ("ln_post.weight", "ln_post.bias"),
    ("proj",),
)
LLM_LAYER: tuple[Item, ...] = (
    ("input_layernorm.weight",),
    ("self_attn.q_proj.weight", "self_attn.q_proj.bias"),
    ("self_attn.k_proj.weight", "self_attn.k_proj.bias"),
    ("self_attn.v_proj.weight", "self_attn.v_proj.bias"),
    ("self_attn.o_proj.weight",),
    ("post_attention_layernorm.weight",),
    ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    ("mlp.down_proj.weight",),
)

# A fused item (``pack --fold``, see wstream.model.folds) takes the place of the first item it
# replaces, so a folded container keeps the execution order.
FUSED_ITEMS: dict[Item, tuple[Item, ...]] = {
    (QKV_WEIGHT, QKV_BIAS): (
        ("self_attn.q_proj.weight", "self_attn.q_proj.bias"),
        ("self_attn.k_proj.weight", "self_attn.k_proj.bias"),
        ("self_attn.v_proj.weight", "self_attn.v_proj.bias"),
    ),
}


def _folded(items: tuple[Item, ...], prefix: str, names: set[str]) -> tuple[Item, ...]:
    """``items`` with every fused item present in ``names`` in place of the items it replaces."""
    out = list(items)
    for fused, replaced in FUSED_ITEMS.items():
        if prefix + fused[0] in names and replaced[0] in out:
            at = out.index(replaced[0])
            out = [it for it in out if it not in replaced]
            out.insert(at, fused)
    return tuple(out)


_VISION_LAYER_RE = re.compile(r"^vpm\.encoder\.layers\.(\d+)\.")
_LLM_LAYER_RE = re.compile(r"^llm\.model\.layers\.(\d+)\.")


def _minicpmv_plans(names: set[str]) -> list[ScheduledGroup] | None:
    """The MiniCPM-V 2.6 order, or None when the names are not (only) MiniCPM-V 2.6 names."""
    vision_layers = sorted({int(m.group(1)) for n in names if (m := _VISION_LAYER_RE.match(n))})
    llm_layers = sorted({int(m.group(1)) for n in names if (m := _LLM_LAYER_RE.match(n))})
    if not llm_layers:
        return None

    def group(name: str, prefix: str, items: tuple[Item, ...]) -> ScheduledGroup:
        items = _folded(items, prefix, names)
        return ScheduledGroup(name, prefix, tuple(tuple(prefix + t for t in it) for it in items))

    plans: list[ScheduledGroup] = []
    if vision_layers or any(n.startswith(("vpm.", "resampler.")) for n in names):
        plans.append(group("vision.embed", "vpm.embeddings.", VISION_EMBED))
        plans += [
            group(f"vision.layer.{i}", f"vpm.encoder.layers.{i}.", VISION_LAYER)
            for i in vision_layers
        ]
        plans.append(group("vision.post_norm", "vpm.post_layernorm.", VISION_POST))
        plans.append(group("resampler", "resampler.", RESAMPLER))
    plans.append(group("llm.embed", "llm.model.embed_tokens.", (("weight",),)))
    plans += [group(f"llm.layer.{i}", f"llm.model.layers.{i}.", LLM_LAYER) for i in llm_layers]
    plans.append(group("llm.norm", "llm.model.norm.", (("weight",),)))
    plans.append(group("llm.head", "llm.lm_head.", (("weight",),)))

    planned = {n for p in plans for n in p.tensor_names}
    # Only claim the checkpoint when the table covers it exactly; anything else (another
    # MiniCPM-V version, a partial checkpoint) falls back to the generic order rather than
    # failing or silently dropping tensors.
    if planned != names:
        return None
    return plans


# --- Generic order -------------------------------------------------------------------------------

_INDEX_RE = re.compile(r"^(.*?)\.(\d+)\.")


def _natural_key(name: str) -> list[object]:
    # isdecimal, not isdigit: "²" is a digit but not decimal; \d (and int()) take decimals only.
    return [int(tok) if tok.isdecimal() else tok for tok in re.split(r"(\d+)", name)]


# An un-indexed tensor is an embedding (consumed before the layers) or a head (consumed last);
# anything else un-indexed (final norms, poolers) runs between the layers and the head.
_EMBEDDING_RE = re.compile(r"embed|(^|\.)(wte|wpe)\.", re.IGNORECASE)
_HEAD_RE = re.compile(r"(^|[._])(lm_head|head|output|classifier)([._]|$)", re.IGNORECASE)


def _generic_plans(names: set[str]) -> list[ScheduledGroup]:
    """Embeddings, then the layers by index, then the other un-indexed tensors, then heads."""
    embeddings: list[str] = []
    other: list[str] = []
    heads: list[str] = []
    layers: dict[tuple[str, int], list[str]] = {}
    for name in names:
        m = _INDEX_RE.match(name)
        if m is not None:
            layers.setdefault((m.group(1), int(m.group(2))), []).append(name)
        elif _EMBEDDING_RE.search(name):
            embeddings.append(name)
        elif _HEAD_RE.search(name):
            heads.append(name)
        else:
            other.append(name)

    def whole(group: str, members: list[str]) -> list[ScheduledGroup]:
        return [ScheduledGroup(group, "", tuple((n,) for n in sorted(members)))] if members else []

    plans = whole("model.embed", embeddings)
    for prefix, index in sorted(layers, key=lambda k: (_natural_key(k[0]), k[1])):
        members = sorted(layers[(prefix, index)], key=_natural_key)
        plans.append(
            ScheduledGroup(
                f"model.{prefix}.{index}", f"{prefix}.{index}.", tuple((n,) for n in members)
            )
        )
    return plans + whole("model.other", other) + whole("model.head", heads)


def execution_order(names: Iterable[str]) -> list[ScheduledGroup]:
    """Group and order tensor names the way the forward pass consumes them.

    >>> [p.name for p in execution_order(["llm.model.norm.weight", "llm.lm_head.weight",
    ...     "llm.model.embed_tokens.weight"])]
    ['llm.embed', 'llm.norm', 'llm.head']
    """
    name_set = set(names)
    plans = _minicpmv_plans(name_set)
    return plans if plans is not None else _generic_plans(name_set)
