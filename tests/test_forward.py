"""The numpy MiniCPM-V 2.6 forward: golden outputs, weight access order, row blocks, config.

Every forward here runs the real path: synthetic checkpoint (sharded safetensors + index) ->
``wstream.pack.pack`` -> ``Container`` -> weight source -> ``wstream.model.vlm.generate``.

The goldens in tests/golden/ come from an independent float64 torch implementation
(transformers' Idefics2VisionTransformer, torch.nn.MultiheadAttention, Qwen2ForCausalLM) on the
same bf16 weights; tools/make_golden.py writes them.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_helpers import (
    GOLDEN,
    REGENERATE,
    SMALL_CHUNK,
    GoldenCase,
    RecordingSource,
    golden_cases,
    pack_to,
    write_case_checkpoint,
)

from wstream import synthetic
from wstream.container.reader import Container
from wstream.errors import InputError
from wstream.model.config import VLMConfig, from_hf, tensor_shapes, to_hf
from wstream.model.ops import navit_position_ids
from wstream.model.vlm import Generation, chunks_holding, generate
from wstream.pack import pack
from wstream.stream.loader import EagerWeights, StreamingLoader
from wstream.stream.plan import Widen
from wstream.stream.testing import InstrumentedLoader

CASES = golden_cases()
PACKINGS = {  # name: (codec, max_chunk)
    "raw": ("raw", 32 << 20),
    "zstd": ("zstd", 32 << 20),
    "raw-64k": ("raw", SMALL_CHUNK),  # row blocks everywhere: embeddings, in_proj, lm_head...
    "zstd-shuffle-64k": ("zstd-shuffle", SMALL_CHUNK),
}
# The bound asked for is 1e-3 * max|golden|; float32 against float64 lands near 1e-6, so 1e-4
# keeps a wide margin for other BLAS builds while still catching a wrong epsilon or scale.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each golden case's checkpoint, written once."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        name: write_case_checkpoint(root / name, case).directory for name, case in CASES.items()
    }


@pytest.fixture(scope="module")
def containers(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("containers")
    return {
        (name, packing): pack_to(
            checkpoints[name], root / f"{name}-{packing}.wst", codec=codec, max_chunk=max_chunk
        )
        for name in CASES
        for packing, (codec, max_chunk) in PACKINGS.items()
    }


def pack_quantized(
    checkpoints: dict[str, Path], root: Path, scheme: str
) -> dict[tuple[str, str], Path]:
    """Every test model packed with ``--quantize scheme``, raw in small chunks and zstd in one."""
    out = {}
    for name in CASES:
        for codec, chunk in (("raw", 64 * 1024), ("zstd", 32 << 20)):
            path = root / f"{name}-{codec}.wst"
            pack(checkpoints[name], path, codec=codec, quantize=scheme, max_chunk=chunk)
            out[name, codec] = path
    return out


def smallest_budget(path: Path, widen: Any) -> int:
    """The smallest budget the streaming loader accepts for every chunk of ``path``."""
    with Container(path) as c, StreamingLoader(c, widen=widen) as probe:
        return probe.min_budget([ch.name for ch in c.manifest.chunks])


def assert_streamed_equals(
    eager: Any, path: Path, case: Any, k: int, budget: int | None, widen: Any
) -> None:
    """Streamed at prefetch ``k`` under ``budget``, released slabs poisoned (NaN): the same
    logits, step logits and tokens as ``eager``, bit for bit."""
    streamed, _ = run_case(
        path, case, InstrumentedLoader, budget=budget, prefetch=k, poison=True, widen=widen
    )
    where = (widen, k, budget)
    assert np.array_equal(streamed.logits, eager.logits), where
    assert np.array_equal(streamed.step_logits, eager.step_logits), where
    assert streamed.tokens == eager.tokens, where


def check_quantized_streaming(
    path: Path,
    case: Any,
    budgets: Sequence[tuple[int, int | None]],
    max_rel: float,
    min_cosine: float,
) -> Any:
    """A quantized container handed to the forward as stored: streamed at each (prefetch,
    budget) (0: the smallest that fits; None: no budget) with poisoned slabs is bit-identical
    to eager with the same pieces; the eager run is within ``max_rel`` of the float32
    dequantized one and ``min_cosine`` of the golden logits. Returns the eager result."""
    eager, _ = run_case(path, case, EagerWeights, keep_quantized=True)
    smallest = smallest_budget(path, Widen.QUANTIZED)
    for k, budget in ((k, smallest if b == 0 else b) for k, b in budgets):
        assert_streamed_equals(eager, path, case, k, budget, Widen.QUANTIZED)
    dequantized, _ = run_case(path, case)  # dequantized to float32 up front
    assert rel_err(eager.logits, dequantized.logits) <= max_rel  # summation order only
    a, b = case.logits.reshape(-1).astype(np.float64), eager.logits.reshape(-1).astype(np.float64)
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cosine >= min_cosine, cosine
    return eager


def run_case(
    path: Path, case: GoldenCase, source_type: type = EagerWeights, **source_args: object
) -> tuple[Generation, RecordingSource]:
    with Container(path) as container:
        source = RecordingSource(source_type(container, **source_args))
        try:
            out = generate(
                source,
                case.input_ids,
                pixels=case.pixels,
                image_bound=case.image_bound,
                max_new_tokens=len(case.tokens),
            )
        finally:
            source.inner.close()
    return out, source


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


# --- (a) golden outputs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_generator_still_makes_the_golden_weights(name: str, tmp_path: Path) -> None:
    written = write_case_checkpoint(tmp_path / "ckpt", CASES[name])
    assert written.sha256 == CASES[name].meta["weights_sha256"], (
        f"wstream/synthetic.py no longer generates the weights tests/golden/{name}.npz was made "
        f"from; if that change is intended, regenerate the goldens: {REGENERATE}"
    )


@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("name", CASES)
def test_matches_golden(name: str, packing: str, containers: dict[tuple[str, str], Path]) -> None:
    case = CASES[name]
    out, _ = run_case(containers[name, packing], case)
    assert out.logits.dtype == np.float32 and out.logits.shape == case.logits.shape
    assert rel_err(out.logits, case.logits) <= REL_TOL
    assert rel_err(out.step_logits, case.step_logits) <= REL_TOL  # KV cache + RoPE offsets
    assert out.tokens == case.tokens


def test_navit_position_ids_equal_torch() -> None:
    """MiniCPM-V's bucketize formula, as torch computes it, for every side 1..70."""
    table = json.loads((GOLDEN / "navit_position_ids.json").read_text())
    grid = table["grid"]
    for side, buckets in table["buckets"].items():
        n = int(side)
        ids = navit_position_ids(n, 3, grid).reshape(n, 3)
        assert (ids[:, 0] // grid).tolist() == buckets, n
        assert ids[0].tolist() == [0, 23, 46]  # floor(70 * j / 3) along the row
    # The closed form used elsewhere is not the same function; keep the record honest.
    floor = [
        n
        for n in range(1, grid + 1)
        if navit_position_ids(n, 1, grid).tolist()
        != [grid * math.floor(grid * i / n) for i in range(n)]
    ]
    assert floor == table["floor_differs_at"] == [25, 49, 50, 55, 58]


# --- (b) weights are asked for in execution order -------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-text"])
def test_chunk_order(name: str, containers: dict[tuple[str, str], Path]) -> None:
    """Each walk (one ``stream`` call) asks for chunks in strictly increasing manifest order.

    Walk 1 is the prefill: with an image, every vision and resampler chunk; then the llm.embed
    chunks holding the prompt's text ids (no others), then every other llm chunk. Walk k > 1 is
    decode step k-1: the one llm.embed chunk holding the previous token, every other llm chunk,
    marked ``repeat``. Without an image no chunk of a vision.* or resampler group is requested.
    Everything requested is handed over and consumed, in that order (``chunk_log``).
    """
    case = CASES[name]
    path = containers[name, "raw-64k"]
    out, source = run_case(path, case)
    with Container(path) as c:
        chunks = c.manifest.chunks
    index = {ch.name: i for i, ch in enumerate(chunks)}
    group = {ch.name: ch.group for ch in chunks}
    embed = [ch.name for ch in chunks if ch.group == "llm.embed"]
    llm_rest = [ch.name for ch in chunks if ch.stage == "llm" and ch.group != "llm.embed"]
    vision = [ch.name for ch in chunks if ch.stage in ("vision", "resampler")]
    assert len(embed) > 1 and len(vision) > 1  # the 64 KiB pack really split them

    def holding(ids: np.ndarray) -> list[str]:
        return chunks_holding(source, "llm.embed", ids)

    text = np.ones(len(case.input_ids), dtype=bool)
    if case.image_bound:
        text[case.image_bound[0] : case.image_bound[1]] = False
    expected = [
        (
            (vision if case.pixels is not None else []) + holding(case.input_ids[text]) + llm_rest,
            False,
        )
    ]
    expected += [(holding(np.array([t])) + llm_rest, True) for t in out.tokens[:-1]]
    assert len(holding(case.input_ids[text])) < len(embed)  # a real subset was streamed
    assert source.walks == expected
    for walk, _ in source.walks:
        assert [index[c] for c in walk] == sorted(index[c] for c in walk)
        assert len(set(walk)) == len(walk)
    assert source.chunk_log == [c for walk, _ in source.walks for c in walk]
    if case.pixels is None:
        assert not [
            c
            for c in source.chunk_log
            if group[c].startswith("vision.") or group[c].startswith("resampler")
        ]


# --- (c) row blocks and streaming change nothing but round-off -------------------------------


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa"])
def test_blocked_equals_unblocked(name: str, containers: dict[tuple[str, str], Path]) -> None:
    case = CASES[name]
    whole, _ = run_case(containers[name, "raw"], case)
    blocked, _ = run_case(containers[name, "raw-64k"], case)
    assert rel_err(blocked.logits, whole.logits) <= 1e-5  # summation order only
    assert rel_err(blocked.step_logits, whole.step_logits) <= 1e-5
    assert blocked.tokens == whole.tokens
    zstd, _ = run_case(containers[name, "zstd"], case)
    assert np.array_equal(zstd.logits, whole.logits)  # same chunks, other codec: bit-identical


@pytest.mark.parametrize("packing", ["raw-64k", "zstd", "zstd-shuffle-64k"])
def test_streamed_equals_eager(packing: str, containers: dict[tuple[str, str], Path]) -> None:
    """The streaming loader, for every prefetch depth and budgets from the smallest workable to
    unlimited, gives bit-identical outputs, with released slabs poisoned (NaN): the forward
    never touches a weight after its chunk goes."""
    case = CASES["tiny-gqa"]
    path = containers["tiny-gqa", packing]
    eager, _ = run_case(path, case)
    smallest = smallest_budget(path, Widen.FLOAT32)
    full = packing == "raw-64k"  # the whole grid once; a corner of it for the codecs
    # The workers widen to float32, or (what `wstream run` uses) the forward widens bf16 itself.
    for widen in ("float32", "dequantize"):
        for k in (0, 1, 2, 4) if full else (0, 2):
            for budget in (smallest, 4 * smallest, None) if full else (smallest, None):
                assert_streamed_equals(eager, path, case, k, budget, widen)


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa"])
def test_int8_forward_stays_close_to_float(
    name: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """INT8 linear layers (group 128) against the float weights: logits cosine >= 0.999 and the
    same top-1 token at the last position."""
    case = CASES[name]
    path = tmp_path / "int8.wst"
    pack(checkpoints[name], path, codec="zstd", shuffle=True, quantize="int8")
    floats, _ = run_case(pack_to(checkpoints[name], tmp_path / "f.wst"), case)
    quant, _ = run_case(path, case, StreamingLoader, budget=None, prefetch=2)
    a, b = floats.logits.reshape(-1).astype(np.float64), quant.logits.reshape(-1).astype(np.float64)
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cosine >= 0.999, cosine
    assert np.argmax(quant.logits[-1]) == np.argmax(floats.logits[-1])


# --- config and generator -----------------------------------------------------------------------


def test_full_preset_is_minicpm_v_2_6() -> None:
    """minicpmv.md section 0: 789 tensors, 8,099,175,152 params, 16,198,350,304 bf16 bytes."""
    shapes = tensor_shapes(synthetic.PRESETS["full"])
    assert len(shapes) == 789
    assert sum(math.prod(s) for s in shapes.values()) == 8_099_175_152
    assert shapes["resampler.attn.in_proj_weight"] == (10752, 3584)
    assert shapes["llm.model.layers.27.self_attn.k_proj.weight"] == (512, 3584)


@pytest.mark.parametrize("name", synthetic.PRESETS)
def test_config_round_trip(name: str) -> None:
    cfg: VLMConfig = synthetic.PRESETS[name]
    assert from_hf(to_hf(cfg)) == cfg


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c.pop("vocab_size"), "vocab_size is missing"),
        (lambda c: c["vision_config"].pop("patch_size"), "vision_config.patch_size is missing"),
        (lambda c: c.update(num_key_value_heads=3), "num_key_value_heads"),
        (lambda c: c.update(hidden_size=True), "hidden_size"),
        (lambda c: c.update(rms_norm_eps=-1.0), "rms_norm_eps"),
        (lambda c: c.update(hidden_size=320, num_attention_heads=4), "multiple of 128"),
        (lambda c: c.update(model_type="qwen2"), "model_type"),
        (lambda c: c["vision_config"].update(hidden_act="relu"), "hidden_act"),
    ],
)
def test_config_errors_name_the_field(edit, field: str) -> None:  # type: ignore[no-untyped-def]
    config = to_hf(synthetic.PRESETS["tiny"])
    edit(config)
    with pytest.raises(InputError, match=field):
        from_hf(config)


def test_config_defaults_like_2_6() -> None:
    """2.6's config.json leaves hidden_act and layer_norm_eps to SiglipVisionConfig."""
    config = to_hf(synthetic.PRESETS["tiny"])
    del config["vision_config"]["hidden_act"], config["vision_config"]["layer_norm_eps"]
    assert from_hf(config) == synthetic.PRESETS["tiny"]


def test_generator_layout(tmp_path: Path) -> None:
    """Index with the real total_size, shard files safetensors reads, values seed-determined and
    independent of sharding."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 for safetensors' numpy loader)
    from safetensors import safe_open

    a = synthetic.write_checkpoint(tmp_path / "a", "tiny", seed=5, shards=3)
    b = synthetic.write_checkpoint(tmp_path / "b", "tiny", seed=5, shards=1)
    c = synthetic.write_checkpoint(tmp_path / "c", "tiny", seed=6, shards=3)
    assert a.sha256 == b.sha256 != c.sha256
    index = json.loads((a.directory / "model.safetensors.index.json").read_text())
    shapes = tensor_shapes(synthetic.PRESETS["tiny"])
    assert (
        index["metadata"]["total_size"]
        == a.total_size
        == 2 * sum(math.prod(s) for s in shapes.values())
    )
    assert set(index["weight_map"]) == set(shapes)
    seen = 0
    for shard in a.files:
        with safe_open(shard, "np") as f:
            for key in f.keys():
                seen += 1
                value = f.get_tensor(key)
                assert value.shape == shapes[key]
                assert np.array_equal(
                    value.view(np.uint16),
                    synthetic.tensor_values(key, shapes[key], 5).view(np.uint16),
                )
    assert seen == len(shapes)


def test_generator_memory_is_a_slab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The largest tensor (embed_tokens, 16 MiB of bf16 here) is never held whole."""
    base = synthetic.PRESETS["tiny"]
    cfg = VLMConfig(
        base.vision,
        base.resampler,
        base.decoder.__class__(**{**_fields(base.decoder), "vocab": 32768}),
    )
    monkeypatch.setattr(synthetic, "SLAB_ELEMENTS", 1 << 16)
    tracemalloc.start()
    try:
        written = synthetic.write_checkpoint(tmp_path / "big", cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = 2 * 32768 * base.decoder.hidden
    assert written.total_size > 2 * largest
    assert peak < largest / 8, peak


def _fields(obj: object) -> dict[str, object]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}  # type: ignore[attr-defined]
