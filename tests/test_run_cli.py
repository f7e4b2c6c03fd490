"""``wstream run`` and ``wstream demo`` through ``wstream.cli.main``, plus wstream.run's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_helpers import pack_to

from wstream.cli import main
from wstream.container.reader import Container
from wstream.model.vlm import generate
from wstream.run import load_image
from wstream.stream.loader import EagerWeights
from wstream.synthetic import PRESETS, write_checkpoint

CFG = PRESETS["tiny"]
Q = CFG.resampler.queries  # 64
T = 4 + Q + 4
IDS = ",".join(str(i) for i in [5, 6, 7, 8] + [0] * Q + [9, 10, 11, 12])
STAGES = {"open", "load", "vision", "resampler", "prefill", "decode"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run")
    written = write_checkpoint(root / "ckpt", "tiny", seed=3)
    rng = np.random.default_rng(3)
    arrays = {
        "pixels": rng.uniform(-1, 1, (3, 28, 42)).astype(np.float32),
        "pixels_f64": rng.uniform(-1, 1, (3, 28, 42)),
        "pixels_2d": rng.uniform(-1, 1, (28, 42)).astype(np.float32),
        "pixels_odd": rng.uniform(-1, 1, (3, 30, 42)).astype(np.float32),
    }
    out = {"wst": pack_to(written.directory, root / "tiny.wst")}
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
        out[name] = root / f"{name}.npy"
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8), "RGB").save(
        root / "image.png"
    )
    out["png"] = root / "image.png"
    (root / "junk.png").write_bytes(b"not an image at all")
    out["junk_png"] = root / "junk.png"
    (root / "notes.wst").write_text("this is not a container\n" * 10)
    out["not_wst"] = root / "notes.wst"
    return out


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["run", *argv, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)  # type: ignore[no-any-return]


def test_run_json_reports_every_field(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    logits_out = tmp_path / "logits.npy"
    report = run_json(
        capsys,
        str(files["wst"]),
        "--pixels",
        str(files["pixels"]),
        "--input-ids",
        IDS,
        "--image-bound",
        f"4:{4 + Q}",
        "--max-new-tokens",
        "3",
        "--logits-out",
        str(logits_out),
        "--budget",
        "64M",
        "--prefetch",
        "2",
    )
    assert set(report) >= {"generated", "timings", "peak_rss_bytes", "bytes_read", "bytes_decoded"}
    assert set(report["timings"]) == STAGES  # type: ignore[arg-type]
    assert all(v >= 0 for v in report["timings"].values())  # type: ignore[attr-defined]
    assert report["timings"]["vision"] > 0  # type: ignore[index]
    assert report["peak_rss_bytes"] > 10 << 20  # type: ignore[operator]
    loader = report["loader"]
    assert loader["budget_bytes"] == 64 << 20 and loader["prefetch"] == 2  # type: ignore[index]
    assert 0 < loader["peak_pool_bytes"] <= 64 << 20  # type: ignore[index, operator]
    with Container(files["wst"]) as c:
        # Every chunk but the embedding rows the prompt does not use is read by the prefill,
        # and each of the 2 decode steps reads what is not resident again.
        once = sum(ch.nbytes for ch in c.manifest.chunks if ch.group != "llm.embed")
        assert report["bytes_read"] >= once  # type: ignore[operator]
        llm = [ch for ch in c.manifest.chunks if ch.group.startswith("llm.")]
        step = loader["bytes_read_per_decode_step"]  # type: ignore[index]
        assert 0 < step <= sum(ch.nbytes for ch in llm)  # type: ignore[operator]
        source = EagerWeights(c)
        want = generate(
            source,
            np.array(IDS.split(","), dtype=np.int64),
            pixels=np.load(files["pixels"]),
            image_bound=(4, 4 + Q),
            max_new_tokens=3,
        )
    assert report["generated"] == want.tokens
    logits = np.load(logits_out)
    assert logits.dtype == np.float32 and logits.shape == (T, CFG.decoder.vocab)
    assert np.array_equal(logits, want.logits)


def test_run_image_without_bound(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A PNG is resized to multiples of 14 (100 x 60 -> 98 x 56) and, without --image-bound,
    its tokens are prepended to the prompt."""
    report = run_json(
        capsys,
        str(files["wst"]),
        "--image",
        str(files["png"]),
        "--input-ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
    )
    assert report["image_size"] == [56, 98]
    assert report["image_bound"] == [0, Q]
    assert report["prompt_tokens"] == Q + 3
    assert len(report["generated"]) == 2  # type: ignore[arg-type]


def test_run_text_only(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, str(files["wst"]), "--input-ids", "1,2,3,4", "--max-new-tokens", "0")
    assert report["generated"] == [] and report["image_size"] is None
    assert report["timings"]["vision"] == 0.0  # type: ignore[index]


def test_run_human_output(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(files["wst"]), "--input-ids", "1,2", "--max-new-tokens", "1"]) == 0
    out = capsys.readouterr().out
    assert "generated" in out and "peak RSS" in out


def test_load_image_bounds_the_long_side(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (1000, 500), (255, 0, 0)).save(tmp_path / "wide.png")
    Image.new("L", (5, 9), 0).save(tmp_path / "small.png")
    wide = load_image(tmp_path / "wide.png")
    assert wide.shape == (3, 224, 448) and wide.dtype == np.float32
    assert np.allclose(wide[0], 1.0) and np.allclose(wide[1:], -1.0)  # (x/255 - 0.5) / 0.5
    assert load_image(tmp_path / "small.png").shape == (3, 14, 14)  # grey -> RGB, one patch


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pixels", "{pixels_f64}", "--image-bound", "4:68"], "pixels: dtype float64"),
        (["--pixels", "{pixels_2d}", "--image-bound", "4:68"], "pixels: shape"),
        (["--pixels", "{pixels_odd}", "--image-bound", "4:68"], "multiples of 14"),
        (["--pixels", "{pixels}", "--image-bound", "4:60"], "image_bound: 4:60"),
        (["--pixels", "{pixels}", "--image-bound", "40:104"], "image_bound: 40:104"),
        (["--pixels", "{pixels}", "--image-bound", "4-68"], "image-bound"),
        (["--image-bound", "4:68"], "image_bound: must be given exactly when an image is"),
        (["--image", "{junk_png}"], "image: cannot read"),
        (["--image", "{pixels}", "--max-new-tokens", "-1"], "max-new-tokens"),
    ],
)
def test_run_bad_input(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = [
        "run",
        str(files["wst"]),
        "--input-ids",
        IDS,
        *[a.format(**{k: str(v) for k, v in files.items()}) for a in args],
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wstream run: error: InputError: "), err
    assert message in err, err


@pytest.mark.parametrize(
    "ids, message",
    [
        ("5,99999", "id 99999 is outside the vocabulary [0, 1024)"),
        ("5,-1", "id -1 is outside"),
        ("a,b", "input-ids: 'a,b'"),
        ("", "input-ids"),
    ],
)
def test_run_bad_ids(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], ids: str, message: str
) -> None:
    assert main(["run", str(files["wst"]), "--input-ids", ids]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("which, message", [("missing", "No such file"), ("not_wst", "BadMagic")])
def test_run_bad_container(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], which: str, message: str
) -> None:
    path = files["wst"].parent / "nope.wst" if which == "missing" else files[which]
    assert main(["run", str(path), "--input-ids", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wstream run: error: ") and message in err, err


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "checkpoint  tiny",
        "pack ",
        "load-everything baseline",
        "stages",
        "vision",
        "peak RSS",
        "ms/token",
    ):
        assert needle in out, out


def test_run_mmap_maps_the_file_and_gives_the_same_bits(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--mmap`` (zero-copy views of a shared map instead of reads into slabs) changes where the
    bytes come from, not what the forward computes."""
    common = [str(files["wst"]), "--input-ids", IDS, "--max-new-tokens", "3", "--budget", "64M"]
    read = run_json(capsys, *common, "--logits-out", str(tmp_path / "read.npy"))
    mapped = run_json(capsys, *common, "--mmap", "--logits-out", str(tmp_path / "mapped.npy"))
    assert mapped["generated"] == read["generated"]
    assert np.array_equal(np.load(tmp_path / "mapped.npy"), np.load(tmp_path / "read.npy"))
    assert read["loader"]["mapped"] is False  # type: ignore[index]
    assert mapped["loader"]["mapped"] is True  # type: ignore[index]
