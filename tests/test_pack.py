"""pack: safetensors -> .wst in execution order, bounded chunks, atomic output.

- every source tensor lands in the container byte-identical (the name map covers the key set);
- chunks follow ``execution_order`` (MiniCPM-V 2.6 names get the model's order, anything else the
  generic order), and no chunk exceeds ``max_chunk``: bigger tensors become row blocks that
  reassemble bit-exact, with a weight and its bias split at the same rows;
- an interrupted pack leaves no file at the target, an existing target untouched, and no
  temporary file behind.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import strategies as S
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wst_testing import assert_same_tensors, same_tensor, write_checkpoint

from wstream import open_container
from wstream.container.checkpoint import SourceTensor
from wstream.container.reader import Container
from wstream.container.writer import ContainerWriter
from wstream.errors import InputError, SourceError
from wstream.format import spec
from wstream.format.spec import DType
from wstream.model import schedule
from wstream.pack import layout_chunks, pack

pack_module = importlib.import_module("wstream.pack")  # wstream.pack is the function

# --- MiniCPM-V 2.6 naming ------------------------------------------------------------------------

N_VISION, N_LLM = 2, 3


def minicpmv_names() -> list[str]:
    """Every tensor name of a MiniCPM-V 2.6 checkpoint with 2 vision and 3 decoder layers."""

    def expand(prefix: str, items: tuple[tuple[str, ...], ...]) -> list[str]:
        return [prefix + n for item in items for n in item]

    names = expand("vpm.embeddings.", schedule.VISION_EMBED)
    for i in range(N_VISION):
        names += expand(f"vpm.encoder.layers.{i}.", schedule.VISION_LAYER)
    names += expand("vpm.post_layernorm.", schedule.VISION_POST)
    names += expand("resampler.", schedule.RESAMPLER)
    names += ["llm.model.embed_tokens.weight"]
    for i in range(N_LLM):
        names += expand(f"llm.model.layers.{i}.", schedule.LLM_LAYER)
    names += ["llm.model.norm.weight", "llm.lm_head.weight"]
    return names


EXPECTED_GROUPS = [
    "vision.embed",
    "vision.layer.0",
    "vision.layer.1",
    "vision.post_norm",
    "resampler",
    "llm.embed",
    "llm.layer.0",
    "llm.layer.1",
    "llm.layer.2",
    "llm.norm",
    "llm.head",
]


def minicpmv_tensors(seed: int = 0, big: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in reversed(minicpmv_names()):  # source order must not matter
        shape: tuple[int, ...] = (6,) if name.endswith("bias") else (6, 4)
        if big and name == "llm.lm_head.weight":
            shape = (5000, 16)  # 160 KiB of bf16: three 64 KiB chunks
        if big and name.endswith(("gate_proj.weight", "up_proj.weight")):
            shape = (300, 64)  # 38 KiB each in f16: the pair needs two chunks
        bits = rng.integers(0, 1 << 16, math.prod(shape), dtype=np.uint16).reshape(shape)
        out[name] = bits.view(DType.BF16.numpy if "lm_head" in name else np.float16)
    return out


def test_minicpmv_checkpoint_packs_in_execution_order(tmp_path: Path) -> None:
    tensors = minicpmv_tensors()
    src = write_checkpoint(tmp_path / "ck", tensors, shards=3, config={"model_type": "minicpmv"})
    report = pack(src, tmp_path / "m.wst")
    with Container(tmp_path / "m.wst") as c:
        assert c.manifest.groups() == EXPECTED_GROUPS
        # One chunk per group, except that a stage's first item gets a chunk of its own (so the
        # stage computes as soon as it arrives): vision.embed and the resampler have two.
        heads = {"vision.embed", "resampler"}
        expected = [
            n for g in EXPECTED_GROUPS for n in ([f"{g}#0", f"{g}#1"] if g in heads else [g])
        ]
        assert [ch.name for ch in c.manifest.chunks] == expected
        first = c.manifest.chunks[0]
        assert [t.name for t in first.tensors] == [
            "vpm.embeddings.patch_embedding.weight",
            "vpm.embeddings.patch_embedding.bias",
        ]
        assert c.manifest.config == {"model_type": "minicpmv"}
        assert_same_tensors(dict(c.tensors()), tensors)
        # Inside a group, tensors come in the order the forward consumes them.
        layer = c.chunk("llm.layer.1")
        local = [t.name.removeprefix("llm.model.layers.1.") for t in layer.tensors]
        assert local == [n for item in schedule.LLM_LAYER for n in item]
    assert report.tensors == len(tensors) and report.chunks == len(expected)
    assert report.bytes_in == sum(a.nbytes for a in tensors.values())
    assert report.bytes_out == (tmp_path / "m.wst").stat().st_size


def test_minicpmv_big_tensors_become_row_blocks(tmp_path: Path) -> None:
    tensors = minicpmv_tensors(big=True)
    src = write_checkpoint(tmp_path / "ck", tensors)
    pack(src, tmp_path / "m.wst", max_chunk=spec.MIN_MAX_CHUNK, codec="zstd")
    with Container(tmp_path / "m.wst") as c:
        m = c.manifest
        assert m.groups() == EXPECTED_GROUPS
        head = [ch for ch in m.chunks if ch.group == "llm.head"]
        assert [ch.name for ch in head] == [f"llm.head#{k}" for k in range(len(head))]
        assert len(head) == 3
        assert [t.rows for ch in head for t in ch.tensors] == [
            (0, 1667),
            (1667, 3334),
            (3334, 5000),
        ]
        # gate and up are split together: every chunk holding one holds the other, same rows.
        for ch in m.chunks:
            if ch.group == "llm.layer.0":
                rows = {
                    t.name.rsplit(".", 2)[-2]: t.rows
                    for t in ch.tensors
                    if "mlp.gate" in t.name or "mlp.up" in t.name
                }
                if rows:
                    assert (
                        set(rows) == {"gate_proj", "up_proj"}
                        and rows["gate_proj"] == rows["up_proj"]
                    )
        assert all(ch.raw_nbytes <= spec.MIN_MAX_CHUNK for ch in m.chunks)
        assert_same_tensors(dict(c.tensors()), tensors)
        assert same_tensor(c.tensor("llm.lm_head.weight"), tensors["llm.lm_head.weight"])


def test_a_partial_minicpmv_checkpoint_falls_back_to_the_generic_order(tmp_path: Path) -> None:
    tensors = minicpmv_tensors()
    del tensors["llm.model.norm.weight"]
    src = write_checkpoint(tmp_path / "ck", tensors)
    pack(src, tmp_path / "m.wst")
    with Container(tmp_path / "m.wst") as c:
        assert all(g.startswith("model.") for g in c.manifest.groups())
        assert_same_tensors(dict(c.tensors()), tensors)


def test_generic_order_by_layer_index_then_name(tmp_path: Path) -> None:
    tensors = {
        n: np.full(3, i, np.int32)
        for i, n in enumerate(
            [
                "layers.10.w",
                "layers.2.w",
                "layers.2.a",
                "embed",
                "blocks.1.x",
                "head.w",
                "layers.0.w",
            ]
        )
    }
    src = write_checkpoint(tmp_path / "ck", tensors)
    pack(src, tmp_path / "m.wst")
    with Container(tmp_path / "m.wst") as c:
        assert c.manifest.groups() == [
            "model.embed",
            "model.blocks.1",
            "model.layers.0",
            "model.layers.2",
            "model.layers.10",
            "model.head",
        ]
        m = c.manifest

        def members(group: str) -> list[str]:
            return [t.name for ch in m.chunks if ch.group == group for t in ch.tensors]

        assert members("model.embed") == ["embed"]
        assert members("model.head") == ["head.w"]
        # The stage's first item has a chunk of its own.
        assert [t.name for t in c.manifest.chunks[0].tensors] == ["embed"]
        assert [t.name for t in c.chunk("model.layers.2").tensors] == ["layers.2.a", "layers.2.w"]
        assert_same_tensors(dict(c.tensors()), tensors)


def test_generic_norm_and_head_stream_after_the_layers(tmp_path: Path) -> None:
    """A Llama-style checkpoint (no MiniCPM-V names): embedding, layers by index, then the final
    norm, then the head, in the file and so in every stream of it. (The generic order used to
    put every tensor without a layer index, norm and head included, before the layers.)"""
    names = [
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.1.mlp.w",
        "model.embed_tokens.weight",
        "model.layers.0.mlp.w",
        "model.layers.0.input_layernorm.weight",
    ]
    tensors = {n: np.full((4, 4), i, np.float32) for i, n in enumerate(names)}
    src = write_checkpoint(tmp_path / "ck", tensors)
    pack(src, tmp_path / "m.wst")
    order = [p.name for p in schedule.execution_order(names)]
    assert order == [
        "model.embed",
        "model.model.layers.0",
        "model.model.layers.1",
        "model.other",
        "model.head",
    ]
    with open_container(tmp_path / "m.wst") as c:
        streamed = []
        for chunk in c.stream(prefetch=2):
            with chunk:
                streamed += list(chunk.tensors)
    assert streamed == [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.mlp.w",
        "model.layers.1.mlp.w",
        "model.norm.weight",
        "lm_head.weight",
    ]


@pytest.mark.parametrize(
    "names",
    [
        ["1²"],
        ["².0.w"],
        ["a.0.1²", "a.0.b"],
        ["x.٣.y", "x.3.y"],
        ["l.0.a", "l.00.b"],
        ["a.99999999999999999999.w"],
        ["\x00.1.\x00"],
    ],
    ids=repr,
)
def test_generic_order_with_odd_unicode_digits(tmp_path: Path, names: list[str]) -> None:
    tensors = {n: np.arange(2, dtype=np.float32) + i for i, n in enumerate(names)}
    src = write_checkpoint(tmp_path / "ck", tensors)
    pack(src, tmp_path / "m.wst")
    with Container(tmp_path / "m.wst") as c:
        assert_same_tensors(dict(c.tensors()), tensors)


# --- layout_chunks, the pure layout step ------------------------------------------------------


def _fake(name: str, dtype: DType, shape: tuple[int, ...]) -> SourceTensor:
    return SourceTensor(
        name, dtype, shape, Path("/nonexistent"), 0, math.prod(shape) * dtype.itemsize
    )


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[schedule.ScheduledGroup], dict[str, SourceTensor]]:
    """Groups of items; an item is 1 to 3 tensors that share their first dimension (a weight
    and its bias). layout_chunks is pure, so the fake tensors may be large: nothing is read."""
    tensors: dict[str, SourceTensor] = {}
    groups = []
    for g in range(draw(st.integers(0, 4))):
        items = []
        for k in range(draw(st.integers(0, 4))):
            rows = draw(st.integers(0, 3000))
            n = draw(st.integers(1, 3))
            item = []
            for j in range(n):
                dtype = draw(st.sampled_from(list(DType)))
                cols = draw(st.one_of(st.integers(0, 40), st.integers(500, 9000)))
                shapes = [(rows,), (rows, cols)] + ([()] if n == 1 else [])
                name = f"g{g}.i{k}.t{j}"
                tensors[name] = _fake(name, dtype, draw(st.sampled_from(shapes)))
                item.append(name)
            items.append(tuple(item))
        groups.append(schedule.ScheduledGroup(f"s.g{g}", "", tuple(items)))
    return groups, tensors


def _must_fail(
    groups: list[schedule.ScheduledGroup], tensors: dict[str, SourceTensor], max_chunk: int
) -> bool:
    """True when some item does not fit a chunk and one of its rows does not either."""
    slack_per_tensor = 2 * spec.TENSOR_ALIGNMENT  # the planner's alignment allowance
    for g in groups:
        for item in g.items:
            ts = [tensors[n] for n in item]
            slack = slack_per_tensor * len(ts)
            if sum(t.nbytes for t in ts) + slack <= max_chunk:
                continue
            row = sum(t.nbytes // t.shape[0] if t.shape[0] else 0 for t in ts)
            if row + slack > max_chunk:
                return True
    return False


# An item whose bytes fit max_chunk only without the alignment padding between its tensors.
_TIGHT = (
    [schedule.ScheduledGroup("s.g0", "", (("a", "b"),))],
    {"a": _fake("a", DType.U8, (2, 32750)), "b": _fake("b", DType.U8, (2, 15))},
)


@given(layout=layouts(), max_chunk=st.sampled_from([spec.MIN_MAX_CHUNK, 100_000, 1 << 20]))
@example(layout=_TIGHT, max_chunk=spec.MIN_MAX_CHUNK)
@settings(deadline=None, max_examples=S.examples(4))
def test_plan_chunks_bounds_and_tiles(
    layout: tuple[list[schedule.ScheduledGroup], dict[str, SourceTensor]], max_chunk: int
) -> None:
    groups, tensors = layout
    try:
        plans = layout_chunks(groups, tensors, max_chunk)
    except InputError:
        assert _must_fail(groups, tensors, max_chunk)
        return
    assert not _must_fail(groups, tensors, max_chunk)
    item_of = {n: item for g in groups for item in g.items for n in item}
    covered: dict[str, list[tuple[int, int] | None]] = {}
    order: list[str] = []
    for plan in plans:
        assert plan.raw_nbytes <= max_chunk, plan.name
        end = 0
        rows_here: dict[str, tuple[int, int] | None] = {}
        for p in plan.pieces:
            assert p.entry.offset % spec.TENSOR_ALIGNMENT == 0 and p.entry.offset >= end
            end = p.entry.offset + p.entry.nbytes
            covered.setdefault(p.entry.name, []).append(p.entry.rows)
            rows_here[p.entry.name] = p.entry.rows
            if p.entry.name not in order:
                order.append(p.entry.name)
            t = tensors[p.entry.name]
            assert p.src_rows == (p.entry.rows or (0, t.shape[0] if t.shape else 1))
        assert plan.raw_nbytes == end
        # The tensors of an item are split together: same rows, same chunk.
        for name, rows in rows_here.items():
            for other in item_of[name]:
                assert rows_here.get(other, "absent") == rows, (name, other)
    assert set(covered) == set(tensors)
    assert order == [n for g in groups for n in g.tensor_names]  # execution order, kept
    for name, rows in covered.items():
        if rows == [None]:
            continue
        assert None not in rows
        assert rows[0][0] == 0 and rows[-1][1] == tensors[name].shape[0]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    # Chunks of one group are contiguous, named group or group#k.
    assert [p.group for p in plans if p.group] == [
        g.name for g in groups for _ in range(sum(1 for p in plans if p.group == g.name))
    ]
    for plan in plans:
        assert plan.name == plan.group or plan.name.startswith(plan.group + "#")


@given(
    rows=st.integers(1, 4000),
    cols=st.integers(1, 64),
    dtype=st.sampled_from([DType.U8, DType.BF16, DType.F32, DType.F64]),
    max_chunk=st.sampled_from(
        [spec.MIN_MAX_CHUNK, spec.MIN_MAX_CHUNK + 1, 3 * spec.MIN_MAX_CHUNK - 7]
    ),
    codec=st.sampled_from(["raw", "zstd"]),
)
@settings(deadline=None, max_examples=S.examples(0.6))
def test_max_chunk_row_blocks_reassemble_bit_exact(
    tmp_path_factory: pytest.TempPathFactory,
    rows: int,
    cols: int,
    dtype: DType,
    max_chunk: int,
    codec: str,
) -> None:
    d = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(rows * cols)
    nbytes = rows * cols * dtype.itemsize
    w = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype.numpy).reshape(rows, cols)
    tensors = {"blk.0.w": w, "blk.0.n": np.arange(rows, dtype=np.int32)}
    pack(write_checkpoint(d, tensors), d / "m.wst", max_chunk=max_chunk, codec=codec)
    with Container(d / "m.wst") as c:
        info = c.manifest.tensors["blk.0.w"]
        n_parts = len(info.parts)
        if nbytes + 2 * spec.TENSOR_ALIGNMENT <= max_chunk:
            assert n_parts == 1
        elif nbytes > max_chunk:
            assert n_parts >= max(2, math.ceil(nbytes / max_chunk))
        assert all(ch.raw_nbytes <= max_chunk for ch in c.manifest.chunks)
        assert_same_tensors({n: c.tensor(n) for n in tensors}, tensors)
        assert_same_tensors(dict(c.tensors()), tensors)


def test_a_row_larger_than_max_chunk_is_an_input_error(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "ck", {"w": np.zeros((2, 20_000), np.float32)})
    with pytest.raises(InputError, match="cannot hold one row"):
        pack(src, tmp_path / "m.wst", max_chunk=spec.MIN_MAX_CHUNK)
    assert not (tmp_path / "m.wst").exists()


def test_items_split_together_must_share_rows() -> None:
    # vpm patch_embedding weight and bias are one item; different first dims cannot split together.
    t = {
        "w": _fake("w", DType.F32, (100, 400)),
        "b": _fake("b", DType.F32, (3,)),
    }
    group = schedule.ScheduledGroup("vision.embed", "", (("w", "b"),))
    with pytest.raises(SourceError, match="must share their first dimension"):
        layout_chunks([group], t, spec.MIN_MAX_CHUNK)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"codec": "lz4"}, "codec"),
        ({"level": 23}, "level"),
        ({"shuffle": True}, "shuffle"),
        ({"level": spec.MIN_ZSTD_LEVEL - 1}, "level"),
        ({"threads": 0}, "threads"),
        ({"max_chunk": spec.MIN_MAX_CHUNK - 1}, "max_chunk"),
        ({"max_chunk": spec.MAX_CHUNK_RAW_NBYTES + 1}, "max_chunk"),
    ],
)
def test_bad_arguments(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, kwargs: dict, message: str
) -> None:
    src, _ = tiny_checkpoint
    with pytest.raises(InputError, match=message):
        pack(src, tmp_path / "m.wst", **kwargs)
    assert not (tmp_path / "m.wst").exists()


def test_output_must_not_be_a_source_file(tiny_checkpoint: tuple[Path, dict]) -> None:
    src, _ = tiny_checkpoint
    before = src.read_bytes()
    with pytest.raises(InputError, match="is the input"):
        pack(src, src)
    assert src.read_bytes() == before


def test_zstd_threads_and_levels(tiny_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    src, tensors = tiny_checkpoint
    for level, threads, shuffle in [(1, 2, False), (-7, 1, True), (19, 1, False), (None, 2, True)]:
        pack(src, tmp_path / "m.wst", codec="zstd", level=level, threads=threads, shuffle=shuffle)
        with Container(tmp_path / "m.wst") as c:
            for ch in c.manifest.chunks:
                assert ch.codec[-1].id is spec.CodecId.ZSTD and ch.codec[-1].level == level
            assert_same_tensors(dict(c.tensors()), tensors)
            c.verify()


def test_pack_is_reproducible(tiny_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    src, _ = tiny_checkpoint
    pack(src, tmp_path / "a.wst", codec="zstd")
    pack(src, tmp_path / "b.wst", codec="zstd")
    assert (tmp_path / "a.wst").read_bytes() == (tmp_path / "b.wst").read_bytes()


def test_alignment_gaps_are_zero(tmp_path: Path) -> None:
    # Chunk 2 reuses chunk 0's buffer: its padding must not carry chunk 0's bytes.
    rng = np.random.default_rng(5)
    tensors = {
        "big": rng.integers(1, 256, 5000, dtype=np.uint8),
        "layers.0.x": rng.integers(1, 256, 3, dtype=np.uint8),
        "layers.1.a": rng.integers(1, 256, 3, dtype=np.uint8),
        "layers.1.b": rng.integers(1, 256, 3, dtype=np.uint8),
    }
    pack(write_checkpoint(tmp_path / "ck", tensors), tmp_path / "m.wst")
    with Container(tmp_path / "m.wst") as c:
        assert len(c.manifest.chunks) == 3
        for ch in c.manifest.chunks:
            raw = np.array(c.decode(ch))
            for t in ch.tensors:
                raw[t.offset : t.offset + t.nbytes] = 0
            assert not raw.any(), ch.name


def test_progress_counts_every_source_byte(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    src, tensors = tiny_checkpoint
    seen: list[int] = []
    pack(src, tmp_path / "m.wst", progress=seen.append)
    assert sum(seen) == sum(a.nbytes for a in tensors.values())


def test_empty_checkpoint_packs_to_a_zero_chunk_container(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "ck", {}, config={"a": 1})
    report = pack(src, tmp_path / "m.wst")
    assert report.chunks == 0 and report.tensors == 0
    with Container(tmp_path / "m.wst") as c:
        assert c.manifest.chunks == () and c.manifest.config == {"a": 1}
        c.verify()


# --- interrupted packs ---------------------------------------------------------------------------


class Boom(Exception):
    pass


def _interrupt_add_chunk(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    real = ContainerWriter.add_chunk
    calls = {"n": 0}

    def add_chunk(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ContainerWriter, "add_chunk", add_chunk)


def _interrupt_read(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    real = pack_module.CheckpointReader.read_into
    calls = {"n": 0}

    def read_into(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pack_module.CheckpointReader, "read_into", read_into)


def _interrupt_encode(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def encode(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise exc

    monkeypatch.setattr(pack_module.codecs, "encode", encode)


def _interrupt_close(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    # After the manifest and preamble are written, before the rename.
    import wstream.container.writer as writer_module

    def parse_manifest(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise exc

    monkeypatch.setattr(writer_module, "parse_manifest", parse_manifest)


def _interrupt_commit(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    # fsync fails (a full disk, an I/O error) right before the rename.
    import wstream.container.atomic as atomic_module

    def fsync(fd: int) -> None:
        raise exc

    monkeypatch.setattr(atomic_module.os, "fsync", fsync)


def _interrupt_first_write(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    # The writer's very first write (the zeroed preamble area) fails: a full disk at once.
    import wstream.container.atomic as atomic_module

    def pwrite(fd: int, data: object, offset: int) -> int:
        raise exc

    monkeypatch.setattr(atomic_module.os, "pwrite", pwrite)


def _interrupt_rename(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    # Everything is written and synced; the rename over the target fails.
    import wstream.container.atomic as atomic_module

    def replace(src: object, dst: object) -> None:
        raise exc

    monkeypatch.setattr(atomic_module.os, "replace", replace)


INTERRUPTIONS = {
    "writer-first-write": _interrupt_first_write,
    "writer-add-chunk": _interrupt_add_chunk,
    "source-read": _interrupt_read,
    "encode": _interrupt_encode,
    "writer-close": _interrupt_close,
    "commit-fsync": _interrupt_commit,
    "commit-rename": _interrupt_rename,
}


@pytest.mark.parametrize(
    "exc",
    [Boom("boom"), KeyboardInterrupt(), OSError(28, "No space left on device")],
    ids=["exception", "keyboard-interrupt", "enospc"],
)
@pytest.mark.parametrize("where", list(INTERRUPTIONS))
@pytest.mark.parametrize("existing", [False, True], ids=["no-target", "existing-target"])
def test_interrupted_pack_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, exc: BaseException, existing: bool
) -> None:
    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.w": rng.standard_normal((64, 64)).astype(np.float32) for i in range(4)}
    src = write_checkpoint(tmp_path / "ck", tensors)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / "m.wst"
    if existing:
        dst.write_bytes(b"the previous model")
    before = sorted(os.listdir(out_dir))
    INTERRUPTIONS[where](monkeypatch, exc)
    with pytest.raises(type(exc)):
        pack(src, dst, codec="zstd")
    assert sorted(os.listdir(out_dir)) == before  # no temp file, no new file
    if existing:
        assert dst.read_bytes() == b"the previous model"
    monkeypatch.undo()
    pack(src, dst)  # and the same target packs fine afterwards
    with Container(dst) as c:
        assert_same_tensors(dict(c.tensors()), tensors)
