"""``pack --fold`` (issue 13): every fold against the unfolded forward, on every test model.

Folded and unfolded containers of one checkpoint give the same logits within 1e-5 relative in
float32 and the same greedy tokens, streamed under a budget as ``wstream run`` does, raw and
INT8; folding is deterministic; the manifest, ``info``, ``unpack`` and ``verify`` behave as
SPEC.md section 14 says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wstream.cli import main
from wstream.container.checkpoint import CheckpointReader, open_checkpoint
from wstream.container.reader import Container
from wstream.errors import FoldedUnpack, InputError
from wstream.format.spec import FOLD_NAMES, MAX_FOLDS, DType
from wstream.model.config import from_hf
from wstream.model.folds import FOLDS, QKV_BIAS, QKV_WEIGHT, parse_folds
from wstream.model.vlm import generate
from wstream.pack import pack
from wstream.stream.loader import forward_weights
from wstream.synthetic import write_checkpoint
from wstream.unpack import unpack, unpack_report

FIXTURE = Path(__file__).parents[1] / "wstream" / "data" / "minicpmv-tiny"
MODELS = ("tiny", "tiny-gqa", "trained")
REL = 1e-5
SMALL_CHUNK = 1 << 16  # row blocks that straddle the q/k/v boundaries of a fused matrix


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fold-ckpt")
    out = {"trained": FIXTURE / "model.safetensors"}
    for preset in ("tiny", "tiny-gqa"):
        out[preset] = write_checkpoint(root / preset, preset, seed=3).directory
    return out


def _pack(src: Path, dst: Path, **kw: object) -> Path:
    pack(src, dst, max_chunk=SMALL_CHUNK, files=False, **kw)  # type: ignore[arg-type]
    return dst


def _request(path: Path) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Prefill logits, 6 greedy tokens and the decode steps' logits of one image request."""
    with Container(path) as c:
        cfg = from_hf(c.manifest.config)
        rng = np.random.default_rng(7)
        pixels = rng.uniform(-1, 1, (3, 42, 56)).astype(np.float32)  # 3 x 4 patches
        q = cfg.resampler.queries
        ids = np.concatenate([[1, 2], np.zeros(q, np.int64), rng.integers(0, cfg.decoder.vocab, 5)])
        source = forward_weights(c, budget=4 * SMALL_CHUNK)  # a real streaming walk
        try:
            out = generate(source, ids, pixels=pixels, image_bound=(2, 2 + q), max_new_tokens=6)
        finally:
            getattr(source, "close", lambda: None)()
    return out.logits, out.tokens, out.step_logits


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("fold", [*FOLDS, "all"])
@pytest.mark.parametrize("model", MODELS)
def test_folded_forward_matches_unfolded(
    checkpoints: dict[str, Path], tmp_path: Path, model: str, fold: str, quantize: str | None
) -> None:
    plain = _pack(checkpoints[model], tmp_path / "plain.wst", quantize=quantize)
    folded = _pack(checkpoints[model], tmp_path / "folded.wst", quantize=quantize, fold=fold)
    with Container(folded) as c:
        assert c.manifest.folds == parse_folds(fold)
    logits_a, tokens_a, steps_a = _request(plain)
    logits_b, tokens_b, steps_b = _request(folded)
    bound = REL  # qkv copies rows: INT8 quantizes the same rows with the same scales
    assert _close(logits_a, logits_b) <= bound
    assert _close(steps_a, steps_b) <= bound
    assert tokens_a == tokens_b


def test_fused_tensors_stack_the_source_rows(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """qkv: [q; k; v] rows bit for bit (GQA k/v narrower), originals gone, execution order kept."""
    src = checkpoints["tiny-gqa"]
    path = _pack(src, tmp_path / "f.wst", fold="qkv")
    ckpt = open_checkpoint(src)

    def source_bytes(name: str) -> bytes:
        t = ckpt.tensors[name]
        buf = bytearray(t.nbytes)
        with CheckpointReader(ckpt) as reader:
            reader.read_into(t, 0, memoryview(buf))
        return bytes(buf)

    with Container(tmp_path / "f.wst") as c:
        assert not c.manifest.lossy
        names = c.keys()
        assert not any(".q_proj." in n or ".k_proj." in n or ".v_proj." in n for n in names)
        for prefix in ("vpm.encoder.layers.0.", "llm.model.layers.2."):
            for fused, part in ((QKV_WEIGHT, "weight"), (QKV_BIAS, "bias")):
                want = b"".join(source_bytes(f"{prefix}self_attn.{p}_proj.{part}") for p in "qkv")
                got = c.tensor(prefix + fused)
                assert got.dtype == DType.BF16.numpy and got.tobytes() == want
        kv = from_hf(c.manifest.config).decoder
        rows = kv.heads * kv.head_dim + 2 * kv.kv_heads * kv.head_dim
        assert c.manifest.tensors["llm.model.layers.0." + QKV_WEIGHT].shape == (rows, kv.hidden)
        layer = [n for n in names if n.startswith("llm.model.layers.0.")]
        assert layer[:3] == [
            "llm.model.layers.0.input_layernorm.weight",
            "llm.model.layers.0." + QKV_WEIGHT,
            "llm.model.layers.0." + QKV_BIAS,
        ]
        assert layer[3] == "llm.model.layers.0.self_attn.o_proj.weight"
        c.verify()
    assert path.exists()


def test_folding_is_deterministic(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for quantize in (None, "int8"):
        a = _pack(checkpoints["tiny"], tmp_path / "a.wst", fold="all", quantize=quantize)
        b = _pack(checkpoints["tiny"], tmp_path / "b.wst", fold="all", quantize=quantize)
        assert a.read_bytes() == b.read_bytes()
        (tmp_path / "a.wst").unlink()
        (tmp_path / "b.wst").unlink()


def test_zstd_and_dtype_compose(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    plain = _pack(checkpoints["tiny"], tmp_path / "p.wst", codec="zstd", dtype="float32")
    folded = _pack(
        checkpoints["tiny"], tmp_path / "f.wst", codec="zstd", dtype="float32", fold="qkv"
    )
    with Container(folded) as c:
        assert c.manifest.tensors["llm.model.layers.0." + QKV_WEIGHT].dtype is DType.F32
        c.verify()
    (la, ta, _), (lb, tb, _) = _request(plain), _request(folded)
    assert _close(la, lb) <= REL and ta == tb


def test_bad_fold_names_are_named_errors(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for bad, match in (("qkvv", "'qkvv' is not a fold"), ("qkv,qkv", "twice"), ("", "'' is not")):
        with pytest.raises(InputError, match=match):
            pack(checkpoints["tiny"], tmp_path / "x.wst", fold=bad)
    assert not (tmp_path / "x.wst").exists()
    assert set(FOLDS) <= set(FOLD_NAMES)  # every fold offered is one the format can record


def test_a_fold_that_fits_nothing(tmp_path: Path) -> None:
    """Named, it is an error; under ``all`` it is left out (no ``folds`` member at all)."""
    from safetensors.numpy import save_file

    save_file({"model.layers.0.w": np.ones((2, 2), np.float32)}, str(tmp_path / "g.safetensors"))
    with pytest.raises(InputError, match="'qkv' finds nothing to fold"):
        pack(tmp_path / "g.safetensors", tmp_path / "g.wst", fold="qkv")
    pack(tmp_path / "g.safetensors", tmp_path / "g.wst", fold="all")
    with Container(tmp_path / "g.wst") as c:
        assert c.manifest.folds == ()
        assert b'"folds"' not in c.manifest.to_json()


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_pack_info_unpack_verify(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, wst = checkpoints["tiny"], tmp_path / "f.wst"
    code, out, err = run(capsys, "pack", src, "-o", wst, "--fold", "all", "--json")
    assert code == 0, err
    assert json.loads(out)["folds"] == list(FOLDS)
    code, out, _ = run(capsys, "info", wst)
    assert code == 0 and f"folds     {', '.join(FOLDS)}" in out
    code, out, _ = run(capsys, "info", wst, "--json")
    assert json.loads(out)["folds"] == list(FOLDS)
    code, out, _ = run(capsys, "verify", wst)
    assert code == 0 and "OK" in out

    back = tmp_path / "back.safetensors"
    code, _, err = run(capsys, "unpack", wst, "-o", back)
    assert code == 1 and not back.exists()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wstream unpack: error: FoldedUnpack: ")
    assert "--folded" in lines[0]
    code, out, err = run(capsys, "unpack", wst, "-o", back, "--folded", "--no-files")
    assert code == 0, err
    assert "folded    " in out and "not the source checkpoint's" in out
    # What --folded writes is the container's tensors; pack reads it back and records the folds.
    again = tmp_path / "again.wst"
    pack(back, again, files=False)
    with Container(again) as c, Container(wst) as f:
        assert c.manifest.folds == f.manifest.folds
        assert c.keys() == f.keys()
        for name in c.keys():
            assert c.tensor(name).tobytes() == f.tensor(name).tobytes()

    code, _, err = run(capsys, "pack", src, "-o", tmp_path / "x.wst", "--fold", "qkv,bogus")
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and "InputError" in lines[0] and "'bogus'" in lines[0]


def test_unpack_api(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    wst = _pack(checkpoints["tiny"], tmp_path / "f.wst", fold="qkv")
    with pytest.raises(FoldedUnpack, match=r"folded \(qkv\)"):
        unpack(wst, tmp_path / "o.safetensors", files=False)
    report = unpack_report(wst, tmp_path / "o.safetensors", files=False, allow_folded=True)
    assert report.folds == ("qkv",)


def test_spec_md_and_schema_list_the_fold_names() -> None:
    formats = Path(__file__).parents[1] / "formats"
    spec_md = (formats / "SPEC.md").read_text("utf-8")
    assert f"| `FOLD_NAMES` | `{json.dumps(list(FOLD_NAMES))}` |" in spec_md
    schema = json.loads((formats / "manifest.schema.json").read_text("utf-8"))
    folds = schema["properties"]["folds"]
    assert folds["items"]["enum"] == list(FOLD_NAMES)
    assert folds["maxItems"] == MAX_FOLDS
