"""Codecs and lossy transforms: byte grouping + zstd frames round trip every dtype bit-exactly;
INT8 stays within its guaranteed error; dtype conversion rounds to nearest even and is lossy
only when it drops bits."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file
from wst_testing import write_checkpoint

from wstream.container.reader import Container
from wstream.errors import CorruptChunk, DecodedSizeMismatch, LossyUnpack
from wstream.format import codecs
from wstream.format.manifest import CodecStep
from wstream.format.quant import n_groups, quantizable, quantize_int8
from wstream.format.spec import CodecId, DType
from wstream.pack import pack
from wstream.unpack import unpack

GROUPED = (CodecStep(CodecId.BYTEGROUP, size=2), CodecStep(CodecId.ZSTD))


def _roundtrip(
    pipeline: tuple[CodecStep, ...], data: bytes, executor: ThreadPoolExecutor | None = None
) -> bytes:
    parts, recorded = codecs.encode(pipeline, data)
    stored = b"".join(bytes(p) for p in parts)
    out = bytearray(len(data))
    codecs.decode_into(recorded, stored, memoryview(out), executor=executor)
    return bytes(out)


@given(
    array=S.arrays(),
    size=st.sampled_from([2, 4, 8]),
    frame=st.sampled_from([1, 3, 7, 64, 1 << 20]),
    level=st.sampled_from([None, 1, 3]),
)
def test_bytegroup_zstd_roundtrips_every_dtype(
    array: np.ndarray, size: int, frame: int, level: int | None
) -> None:
    data = array.tobytes()
    pipeline = (CodecStep(CodecId.BYTEGROUP, size=size), CodecStep(CodecId.ZSTD, level=level))
    with pytest.MonkeyPatch.context() as mp:
        # Tiny frames put frame edges everywhere: inside planes, across the tail.
        mp.setattr(codecs, "FRAME_NBYTES", frame)
        assert _roundtrip(pipeline, data) == data
        assert _roundtrip(pipeline[:1], data) == data  # grouping alone is a bijection
        assert _roundtrip(pipeline[1:], data) == data  # framed zstd alone


def test_grouped_planes_are_what_the_spec_says() -> None:
    data = bytes(range(11))  # 5 elements of 2 bytes, and 1 tail byte
    assert codecs.group(data, 2) == bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9, 10])


def test_two_threads_decode_one_chunk_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "FRAME_NBYTES", 4096)
    rng = np.random.default_rng(0)
    data = rng.standard_normal(100_000).astype(ml_dtypes.bfloat16).tobytes()
    with ThreadPoolExecutor(1) as ex:
        for pipeline in (GROUPED, GROUPED[1:]):
            assert _roundtrip(pipeline, data, ex) == data


def test_frame_table_must_match_the_frames() -> None:
    data = np.arange(5000, dtype=np.float32).tobytes()
    parts, recorded = codecs.encode(GROUPED, data)
    stored = b"".join(bytes(p) for p in parts)
    zstd_step = recorded[1]
    assert zstd_step.frames is not None
    (s, r), *rest = zstd_step.frames
    lying = (recorded[0], CodecStep(CodecId.ZSTD, frames=((s, r + 1), *rest)))
    with pytest.raises((DecodedSizeMismatch, CorruptChunk)):
        codecs.decode_into(lying, stored, memoryview(bytearray(len(data) + 1)))


# --- INT8 ----------------------------------------------------------------------------------------


@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 300),
    group=st.sampled_from([1, 7, 32, 128, 1000]),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e30]),
    seed=st.integers(0, 2**16),
    zero_rows=st.booleans(),
)
def test_int8_error_is_at_most_half_a_scale(
    rows: int, cols: int, group: int, scale: float, seed: int, zero_rows: bool
) -> None:
    w = (np.random.default_rng(seed).standard_normal((rows, cols)) * scale).astype(np.float32)
    if zero_rows:
        w[0] = 0.0
    q = np.empty((rows, cols), np.int8)
    s = np.empty((rows, n_groups(cols, group)), np.float32)
    quantize_int8(w, group, q, s)
    assert np.all(np.abs(q.astype(np.int16)) <= 127)
    per_elem = np.repeat(s.astype(np.float64), group, axis=1)[:, :cols]
    exact = q.astype(np.float64) * per_elem  # exact: 8-bit x 24-bit fits a double
    assert np.all(np.abs(exact - w.astype(np.float64)) <= per_elem / 2)
    # Each group's own scale, max|w| / 127 (1 for an all-zero group): not one per row, and not
    # larger than it must be (an oversized scale also keeps the error under half of itself).
    g = n_groups(cols, group)
    padded = np.zeros((rows, g * group), np.float64)
    padded[:, :cols] = np.abs(w.astype(np.float64))
    gmax = padded.reshape(rows, g, group).max(axis=2)  # [rows, g]
    want = np.where(gmax == 0, 1.0, gmax / 127)
    assert np.allclose(s, want, rtol=2.0**-22, atol=0)
    qpad = np.zeros((rows, g * group), np.int16)
    qpad[:, :cols] = np.abs(q.astype(np.int16))
    assert np.all(qpad.reshape(rows, g, group).max(axis=2)[gmax > 0] == 127)


def test_quantizable_selects_linear_matrices_only() -> None:
    assert quantizable("llm.model.layers.0.mlp.up_proj.weight", DType.BF16, (512, 256))
    assert quantizable("llm.lm_head.weight", DType.BF16, (1024, 256))
    assert not quantizable("llm.model.embed_tokens.weight", DType.BF16, (1024, 256))
    assert not quantizable("resampler.query", DType.BF16, (64, 256))
    assert not quantizable("llm.model.norm.weight", DType.BF16, (256,))
    assert not quantizable("vpm.embeddings.patch_embedding.weight", DType.BF16, (64, 3, 14, 14))
    assert not quantizable("x.weight", DType.I32, (4, 4))


def _real_like(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    tensors = {
        "embed.weight": rng.standard_normal((64, 48)).astype(ml_dtypes.bfloat16),
        "layers.0.proj.weight": (rng.standard_normal((200, 300)) * 0.02).astype(ml_dtypes.bfloat16),
        "layers.0.proj.bias": rng.standard_normal(200).astype(np.float32),
        "layers.0.fc.weight": (rng.standard_normal((96, 130)) * 0.02).astype(np.float32),
        "layers.0.count": np.arange(5, dtype=np.int64),
    }
    return write_checkpoint(tmp_path / "src", tensors, metadata={"format": "pt"}), tensors


def test_int8_pack_is_lossy_bounded_and_unpack_needs_consent(tmp_path: Path) -> None:
    src, tensors = _real_like(tmp_path)
    out = tmp_path / "q.wst"
    report = pack(src, out, codec="zstd", shuffle=True, quantize="int8", max_chunk=64 * 1024)
    assert report.lossy
    with Container(out) as c:
        assert c.manifest.lossy
        quantized = {t.name for ch in c.manifest.chunks for t in ch.tensors if t.quant is not None}
        assert quantized == {"layers.0.proj.weight", "layers.0.fc.weight"}
        for name, ref in tensors.items():
            got = c.tensor(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            if name not in quantized:
                assert got.tobytes() == ref.tobytes()
                continue
            w = ref.astype(np.float32)
            rows, cols = w.shape
            g = n_groups(cols, 128)  # pack's default group
            padded = np.zeros((rows, g * 128), np.float32)
            padded[:, :cols] = np.abs(w)
            gmax = padded.reshape(rows, g, 128).max(axis=2)  # [rows, g]: per group, not per row
            bound = np.repeat(gmax / 127, 128, axis=1)[:, :cols]
            # Rounding the dequantized value back to bf16 adds at most half a bf16 ulp.
            ulp = np.abs(w) * (2.0**-8 if ref.dtype != np.float32 else 0)
            assert np.all(np.abs(got.astype(np.float32) - w) <= bound / 2 + ulp + 1e-12)
            # The stored scales are exactly those: one per group of 128, max|w| / 127.
            for ci, ti in c.manifest.tensors[name].parts:
                chunk = c.manifest.chunks[ci]
                entry = chunk.tensors[ti]
                assert entry.quant is not None and entry.quant.group == 128
                data = c.decode(chunk)
                at = entry.quant.scales
                scales = data[at : at + entry.scales_nbytes].view(np.float32)
                start, stop = entry.rows or (0, rows)
                scales = scales.reshape(stop - start, g)
                assert np.allclose(scales, gmax[start:stop] / 127, rtol=2.0**-22, atol=0)
    with pytest.raises(LossyUnpack, match="lossy"):
        unpack(out, tmp_path / "u.safetensors")
    assert not (tmp_path / "u.safetensors").exists()
    unpack(out, tmp_path / "u.safetensors", allow_lossy=True)
    back = load_file(str(tmp_path / "u.safetensors"))
    assert set(back) == set(tensors)


@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_dtype_conversion_rounds_to_nearest_even(bits: list[int]) -> None:
    values = np.array(bits, dtype=np.uint32).view(np.float32)
    finite = values[np.isfinite(values)]
    got = finite.astype(ml_dtypes.bfloat16)
    # Reference RNE on the bit pattern: add 0x7FFF + lsb, truncate.
    u = finite.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    overflow = ~np.isfinite(got.astype(np.float32))
    assert np.array_equal(got.view(np.uint16)[~overflow], rounded[~overflow])


def test_dtype_conversion_is_lossy_only_when_bits_are_dropped(tmp_path: Path) -> None:
    exact = np.array([1.0, -2.5, 0.0, 2.0**100], np.float32)  # all representable in bf16
    inexact = np.array([1.0 + 2**-20], np.float32)
    for values, lossy in ((exact, False), (inexact, True)):
        src = write_checkpoint(tmp_path / f"s{lossy}", {"w": values})
        report = pack(src, tmp_path / f"{lossy}.wst", dtype="bfloat16")
        assert report.lossy is lossy
        with Container(tmp_path / f"{lossy}.wst") as c:
            assert c.tensor("w").dtype == ml_dtypes.bfloat16
            assert c.tensor("w").tobytes() == values.astype(ml_dtypes.bfloat16).tobytes()
    widened = pack(
        write_checkpoint(tmp_path / "b", {"w": exact.astype(ml_dtypes.bfloat16)}),
        tmp_path / "f.wst",
        dtype="float32",
    )
    assert widened.lossy is False


def test_each_codec_class_round_trips_alone_and_names_its_manifest_fields() -> None:
    data = np.arange(4096, dtype=np.uint16).tobytes() + b"tail!"
    for cid, cls in codecs.REGISTRY.items():
        assert cls.id is cid
        assert set(cls.fields) <= set(CodecStep._fields) - {"id"}
        step = CodecStep(cid, size=2) if cid is CodecId.BYTEGROUP else CodecStep(cid, level=3)
        codec = cls(step)
        stored = codec.encode(data)
        out = bytearray(len(data))
        codec.decode_into(stored, memoryview(out))
        assert bytes(out) == data, cid
    assert set(codecs.REGISTRY) == set(CodecId)  # every codec the format names has a class
