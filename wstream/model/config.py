"""MiniCPM-V 2.6 hyper-parameters: frozen values parsed once from a checkpoint's config.json.

:func:`from_hf` reads the Hugging Face ``config.json`` of MiniCPM-V 2.6 (Qwen2 fields at the top
level, the SigLIP tower under ``vision_config``) and checks every field the forward relies on;
anything missing or out of range is an :class:`~wstream.errors.InputError` naming the field.
:func:`tensor_shapes` is the one table of tensor names and shapes for a configuration: the
synthetic checkpoint generator writes it and the forward checks a container against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wstream.errors import InputError

RESAMPLER_HEAD_DIM = 128  # MiniCPM-V builds its resampler with num_heads = embed_dim // 128
RESAMPLER_EPS = 1e-6  # ln_q / ln_kv / ln_post: LayerNorm(eps=1e-6) fixed in the model code
# SiglipVisionConfig defaults: 2.6's config.json leaves these two out of vision_config.
DEFAULT_VISION_ACT = "gelu_pytorch_tanh"
DEFAULT_VISION_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """The NaViT SigLIP tower (``vpm.*``)."""

    hidden: int  # width of the ViT residual stream (1152 in 2.6)
    intermediate: int  # width of each block's MLP (4304)
    heads: int  # attention heads (16, so head_dim 72)
    layers: int  # encoder blocks present in the checkpoint (27)
    patch: int  # patch side in pixels (14): the conv kernel and stride
    image_size: int  # 980: image_size // patch = 70 position buckets per side
    eps: float  # LayerNorm epsilon (1e-6)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def grid(self) -> int:
        """Position buckets per side of the learned table (70)."""
        return self.image_size // self.patch


@dataclass(frozen=True, slots=True)
class ResamplerConfig:
    """The perceiver resampler (``resampler.*``): one cross-attention from learned queries."""

    queries: int  # learned queries = visual tokens per slice (query_num, 64)
    dim: int  # width of queries, attention and output: the decoder's hidden size
    heads: int  # dim // 128
    kv_dim: int  # width of the vision features attended to: the vision hidden size
    eps: float  # LayerNorm epsilon of ln_q, ln_kv, ln_post

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """The Qwen2 language model (``llm.*``)."""

    hidden: int  # width of the residual stream (3584)
    intermediate: int  # SwiGLU width (18944)
    heads: int  # query heads (28, head_dim 128)
    kv_heads: int  # key/value heads shared by heads // kv_heads query heads each (4)
    layers: int  # decoder blocks (28)
    vocab: int  # rows of embed_tokens and lm_head (151666)
    eps: float  # RMSNorm epsilon (1e-6)
    rope_theta: float  # RoPE base (1e6)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True, slots=True)
class VLMConfig:
    vision: VisionConfig
    resampler: ResamplerConfig
    decoder: DecoderConfig


# --- parsing -------------------------------------------------------------------------------------


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise InputError(f"config.json: {where}{key} is missing")
    return d[key]


def _int(d: Mapping[str, Any], key: str, where: str = "") -> int:
    value = _get(d, key, where)
    if type(value) is not int or value <= 0:
        raise InputError(f"config.json: {where}{key} = {value!r} must be a positive integer")
    return value


def _float(d: Mapping[str, Any], key: str, where: str = "", default: float | None = None) -> float:
    if default is not None and key not in d:
        return default
    value = _get(d, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f"config.json: {where}{key} = {value!r} must be a positive number")
    return float(value)


def _divides(part: int, whole: int, what: str) -> None:
    if whole % part:
        raise InputError(f"config.json: {what}")


def from_hf(config: Mapping[str, Any]) -> VLMConfig:
    """Parse a MiniCPM-V 2.6 ``config.json`` (as a dict).

    >>> from_hf(json.load(open("MiniCPM-V-2_6/config.json"))).decoder.layers  # doctest: +SKIP
    28
    """
    if not isinstance(config, Mapping):
        raise InputError("config.json: must be a JSON object")
    model_type = config.get("model_type")
    if model_type != "minicpmv":
        raise InputError(f"config.json: model_type = {model_type!r}, expected 'minicpmv'")
    vc = _get(config, "vision_config", "")
    if not isinstance(vc, Mapping):
        raise InputError("config.json: vision_config must be an object")
    act = vc.get("hidden_act", DEFAULT_VISION_ACT)
    if act != DEFAULT_VISION_ACT:
        raise InputError(
            f"config.json: vision_config.hidden_act = {act!r}, only {DEFAULT_VISION_ACT!r} is "
            "implemented"
        )
    w = "vision_config."
    vision = VisionConfig(
        hidden=_int(vc, "hidden_size", w),
        intermediate=_int(vc, "intermediate_size", w),
        heads=_int(vc, "num_attention_heads", w),
        layers=_int(vc, "num_hidden_layers", w),
        patch=_int(vc, "patch_size", w),
        image_size=_int(vc, "image_size", w),
        eps=_float(vc, "layer_norm_eps", w, DEFAULT_VISION_EPS),
    )
    decoder = DecoderConfig(
        hidden=_int(config, "hidden_size"),
        intermediate=_int(config, "intermediate_size"),
        heads=_int(config, "num_attention_heads"),
        kv_heads=_int(config, "num_key_value_heads"),
        layers=_int(config, "num_hidden_layers"),
        vocab=_int(config, "vocab_size"),
        eps=_float(config, "rms_norm_eps"),
        rope_theta=_float(config, "rope_theta"),
    )
    resampler = ResamplerConfig(
        queries=_int(config, "query_num"),
        dim=decoder.hidden,
        heads=decoder.hidden // RESAMPLER_HEAD_DIM,
        kv_dim=vision.hidden,
        eps=RESAMPLER_EPS,
    )
    _divides(
        vision.heads,
        vision.hidden,
        f"vision_config.hidden_size {vision.hidden} is not a multiple of "
        f"num_attention_heads {vision.heads}",
    )
    _divides(
        vision.patch,
        vision.image_size,
        f"vision_config.image_size {vision.image_size} is not a multiple of "
        f"patch_size {vision.patch}",
    )
    _divides(
        decoder.heads,
        decoder.hidden,
        f"hidden_size {decoder.hidden} is not a multiple of num_attention_heads {decoder.heads}",
    )
    _divides(
        decoder.kv_heads,
        decoder.heads,
        f"num_attention_heads {decoder.heads} is not a multiple of num_key_value_heads "
        f"{decoder.kv_heads}",
    )
    _divides(2, decoder.head_dim, f"head dim {decoder.head_dim} must be even for RoPE")
    # The resampler's heads are 128 wide and its 2D sin-cos needs hidden % 4 == 0.
    _divides(
        RESAMPLER_HEAD_DIM,
        decoder.hidden,
        f"hidden_size {decoder.hidden} is not a multiple of {RESAMPLER_HEAD_DIM} "
        "(the resampler's head width)",
    )
    return VLMConfig(vision, resampler, decoder)


def to_hf(cfg: VLMConfig, **extra: Any) -> dict[str, Any]:
    """A MiniCPM-V 2.6 style config.json dict for ``cfg`` (inverse of :func:`from_hf`)."""
    v, d = cfg.vision, cfg.decoder
    return {
        "architectures": ["MiniCPMV"],
        "model_type": "minicpmv",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "num_hidden_layers": d.layers,
        "vocab_size": d.vocab,
        "rms_norm_eps": d.eps,
        "rope_theta": d.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "query_num": cfg.resampler.queries,
        "torch_dtype": "bfloat16",
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": v.hidden,
            "intermediate_size": v.intermediate,
            "num_attention_heads": v.heads,
            "num_hidden_layers": v.layers,
            "patch_size": v.patch,
            "image_size": v.image_size,
            "layer_norm_eps": v.eps,
            "hidden_act": DEFAULT_VISION_ACT,
        },
        **extra,
    }


def tensor_shapes(cfg: VLMConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a MiniCPM-V 2.6 checkpoint with these dimensions: name -> shape."""
    v, r, d = cfg.vision, cfg.resampler, cfg.decoder
    kv = d.kv_heads * d.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "vpm.embeddings.patch_embedding.weight": (v.hidden, 3, v.patch, v.patch),
        "vpm.embeddings.patch_embedding.bias": (v.hidden,),
        "vpm.embeddings.position_embedding.weight": (v.grid * v.grid, v.hidden),
    }
    for i in range(v.layers):
        p = f"vpm.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = shapes[f"{p}{norm}.bias"] = (v.hidden,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (v.hidden, v.hidden)
            shapes[f"{p}self_attn.{proj}.bias"] = (v.hidden,)
        shapes[f"{p}mlp.fc1.weight"] = (v.intermediate, v.hidden)
        shapes[f"{p}mlp.fc1.bias"] = (v.intermediate,)
        shapes[f"{p}mlp.fc2.weight"] = (v.hidden, v.intermediate)
        shapes[f"{p}mlp.fc2.bias"] = (v.hidden,)
    shapes["vpm.post_layernorm.weight"] = shapes["vpm.post_layernorm.bias"] = (v.hidden,)
    shapes.update(
        {
            "resampler.query": (r.queries, r.dim),
            "resampler.kv_proj.weight": (r.dim, r.kv_dim),
            "resampler.attn.in_proj_weight": (3 * r.dim, r.dim),
            "resampler.attn.in_proj_bias": (3 * r.dim,),
            "resampler.attn.out_proj.weight": (r.dim, r.dim),
            "resampler.attn.out_proj.bias": (r.dim,),
            "resampler.proj": (r.dim, r.dim),
        }
    )
    for norm in ("ln_q", "ln_kv", "ln_post"):
        shapes[f"resampler.{norm}.weight"] = shapes[f"resampler.{norm}.bias"] = (r.dim,)
    shapes["llm.model.embed_tokens.weight"] = (d.vocab, d.hidden)
    for i in range(d.layers):
        p = f"llm.model.layers.{i}."
        shapes[f"{p}input_layernorm.weight"] = (d.hidden,)
        shapes[f"{p}self_attn.q_proj.weight"] = (d.hidden, d.hidden)
        shapes[f"{p}self_attn.q_proj.bias"] = (d.hidden,)
        for proj in ("k_proj", "v_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (kv, d.hidden)
            shapes[f"{p}self_attn.{proj}.bias"] = (kv,)
        shapes[f"{p}self_attn.o_proj.weight"] = (d.hidden, d.hidden)
        shapes[f"{p}post_attention_layernorm.weight"] = (d.hidden,)
        shapes[f"{p}mlp.gate_proj.weight"] = (d.intermediate, d.hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (d.intermediate, d.hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (d.hidden, d.intermediate)
    shapes["llm.model.norm.weight"] = (d.hidden,)
    shapes["llm.lm_head.weight"] = (d.vocab, d.hidden)
    return shapes
