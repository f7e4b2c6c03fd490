"""The whole request on the trained tiny MiniCPM-V fixture: a photo and a question in, text out.

The fixture (``wstream/data/minicpmv-tiny``, made by ``tools/train_tiny.py``) is a model of the
2.6 architecture with the real tensor names, a BPE tokenizer carrying the 2.6 special tokens and
chat template, trained to answer questions about coloured shapes. ``tests/golden/minicpmv-tiny``
holds its held-out cases and, for some of them, what the independent torch pipeline of
``tools/tiny_reference.py`` computed in float64: the prompt text, the ids, the spans, the prefill
logits and the greedy answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wstream.errors import InputError, MissingModelFile, ReservedTokenInPrompt
from wstream.model.vlm import generate
from wstream.pack import pack
from wstream.pipeline.chat import Model
from wstream.pipeline.sampling import SamplingParams
from wstream.stream.loader import EagerWeights

FIXTURE = Path(__file__).parents[1] / "wstream" / "data" / "minicpmv-tiny"
GOLDEN = Path(__file__).parent / "golden" / "minicpmv-tiny"
CASES: dict[str, Any] = json.loads((GOLDEN / "cases.json").read_text())
REFERENCES: dict[str, Any] = CASES["references"]
REL_TOL = 1e-4  # the bound for float32 against the float64 torch reference
SHORT = SamplingParams(max_new_tokens=16)  # the answers are a word or two, then <|im_end|>


def case(name: str) -> dict[str, Any]:
    return next(c for c in CASES["cases"] if c["name"] == name)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chat") / "tiny.wst"
    pack(FIXTURE, out, max_chunk=1 << 16)  # many small chunks: a real streaming walk
    return out


@pytest.fixture(scope="module")
def bare_container(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights without the tokenizer and preprocessor files."""
    out = tmp_path_factory.mktemp("bare") / "bare.wst"
    pack(FIXTURE / "model.safetensors", out, files=False)
    return out


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_the_torch_reference(container: Path, name: str) -> None:
    ref, c = REFERENCES[name], case(name)
    with Model.open(container) as model:
        req = model.prepare(c["question"], [GOLDEN / c["image"]])
        assert req.prompt_text == ref["prompt"]
        assert req.input_ids.tolist() == ref["input_ids"]
        assert [list(b) for b in req.image_bounds] == ref["image_bound"]
        assert len(req.slices) == c["slices"]
        tgt = [[px.shape[1] // 14, px.shape[2] // 14] for px in req.slices]
        assert tgt == ref["tgt_sizes"]
        out = generate(
            EagerWeights(model.container),
            req.input_ids,
            slices=req.slices,
            image_bounds=req.image_bounds,
            max_new_tokens=len(ref["answer_ids"]),
        )
    want = np.load(GOLDEN / f"{name}.npz")["prefill_logits"]
    assert out.logits.shape == want.shape
    rel = np.abs(out.logits - want).max() / np.abs(want).max()
    assert rel < REL_TOL, f"{name}: prefill logits differ by {rel:.2e} relative"
    assert out.tokens == ref["answer_ids"]


def test_a_reference_case_has_several_slices() -> None:
    assert max(case(n)["slices"] for n in REFERENCES) >= 4


@pytest.fixture(scope="module")
def held_out_answers(container: Path) -> dict[str, str]:
    """Every held-out case's answer, streamed under a budget (computed once for the tests below)."""
    with Model.open(container, budget=1 << 20, prefetch=2) as model:
        return {
            c["name"]: model.chat(c["question"], [GOLDEN / c["image"]], sampling=SHORT).text()
            for c in CASES["cases"]
        }


def test_answers_as_the_torch_pipeline_does(held_out_answers: dict[str, str]) -> None:
    """Every held-out case: the exact answer the independent torch pipeline gives
    (tools/tiny_reference.py, float64) — right or wrong, the same text."""
    differ = [
        (c["name"], c["reference_answer"], held_out_answers[c["name"]])
        for c in CASES["cases"]
        if held_out_answers[c["name"]] != c["reference_answer"]
    ]
    assert not differ


def test_answers_the_held_out_questions(held_out_answers: dict[str, str]) -> None:
    """The issue's bar: the exact expected answer text for at least 95% of all the held-out
    cases, every kind the fixture keeps (tests/golden/minicpmv-tiny/README.md)."""
    cases = CASES["cases"]
    assert len(cases) >= 40
    assert {c["kind"] for c in cases} == set(CASES["kinds"])
    wrong = [
        (c["name"], c["answer"], held_out_answers[c["name"]])
        for c in cases
        if held_out_answers[c["name"]] != c["answer"]
    ]
    assert len(cases) - len(wrong) >= 0.95 * len(cases), wrong


def test_streamed_equals_eager_answer(container: Path) -> None:
    c = max(CASES["cases"], key=lambda c: c["slices"])
    with Model.open(container) as model:
        eager = model.chat(c["question"], [GOLDEN / c["image"]], sampling=SHORT)
        eager_text = eager.text()
    with Model.open(container, budget=1 << 20, prefetch=1) as model:
        streamed = model.chat(c["question"], [GOLDEN / c["image"]], sampling=SHORT)
        pieces = list(streamed)
    assert "".join(pieces) == eager_text
    assert eager.result is not None and streamed.result is not None
    assert streamed.result.generated == eager.result.generated
    assert streamed.result.slices == c["slices"]
    assert streamed.result.image_tokens == c["slices"] * 16


def test_several_images_in_order(container: Path) -> None:
    a, b = CASES["cases"][0], CASES["cases"][1]
    with Model.open(container) as model:
        req = model.prepare("Compare them.", [GOLDEN / a["image"], GOLDEN / b["image"]])
    assert req.slices_per_image == (a["slices"], b["slices"])
    assert len(req.image_bounds) == a["slices"] + b["slices"]
    first, second = req.prompt_text.index("<image_id>0"), req.prompt_text.index("<image_id>1")
    assert first < second < req.prompt_text.index("Compare them.")


def test_sampling_is_seeded(container: Path) -> None:
    c = CASES["cases"][0]
    params = SamplingParams.chat_defaults(seed=7, max_new_tokens=6)
    with Model.open(container) as model:
        one = model.chat(c["question"], [GOLDEN / c["image"]], sampling=params)
        one.text()
        two = model.chat(c["question"], [GOLDEN / c["image"]], sampling=params)
        two.text()
    assert one.result is not None and two.result is not None
    assert one.result.generated == two.result.generated


def test_stop_string_and_length(container: Path) -> None:
    c = CASES["cases"][0]
    with Model.open(container) as model:
        full = model.chat(c["question"], [GOLDEN / c["image"]], sampling=SHORT).text()
        assert len(full) >= 2
        stopped = model.chat(
            c["question"],
            [GOLDEN / c["image"]],
            sampling=SamplingParams(stop=(full[1:],), max_new_tokens=16),
        )
        assert stopped.text() == full[:1]
        assert stopped.result is not None and stopped.result.finish_reason == "stop"
        short = model.chat(
            c["question"], [GOLDEN / c["image"]], sampling=SamplingParams(max_new_tokens=1)
        )
        short.text()
        assert short.result is not None and len(short.result.generated) == 1


def test_a_typed_image_token_is_rejected(container: Path) -> None:
    with Model.open(container) as model, pytest.raises(ReservedTokenInPrompt, match="<image>"):
        model.prepare("what is <image> here?", [GOLDEN / CASES["cases"][0]["image"]])


def test_a_container_without_tokenizer_is_a_named_error(bare_container: Path) -> None:
    with pytest.raises(MissingModelFile, match=r"tokenizer\.json"):
        Model.open(bare_container)


def wstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wstream.cli", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_answers_with_json(container: Path) -> None:
    c = max(CASES["cases"], key=lambda c: c["slices"])
    r = wstream(
        "run",
        container,
        "--image",
        GOLDEN / c["image"],
        "--prompt",
        c["question"],
        "--json",
        "--budget",
        "1M",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in (
        "text",
        "generated",
        "finish_reason",
        "slices",
        "image_tokens",
        "timings",
        "peak_rss_bytes",
        "bytes_read",
    ):
        assert key in out
    assert out["slices"] == c["slices"]
    assert out["image_tokens"] == 16 * c["slices"]
    assert set(out["timings"]) >= {"open", "preprocess", "vision", "resampler", "prefill", "decode"}
    assert out["finish_reason"] == "stop"


def test_cli_streams_the_answer(container: Path) -> None:
    c = CASES["cases"][0]
    r = wstream(
        "run",
        container,
        "--image",
        GOLDEN / c["image"],
        "--prompt",
        c["question"],
        "--max-new-tokens",
        "16",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == c["answer"] + "\n"
    assert "tokens" in r.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "-2"], "--top-k"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--raw-prompt", "--system", "be brief"], "--system"),
        (["--pixels", "x.npy"], "--pixels"),
    ],
)
def test_cli_bad_flags_are_one_line_errors(container: Path, args: list[str], error: str) -> None:
    c = CASES["cases"][0]
    r = wstream("run", container, "--image", GOLDEN / c["image"], "--prompt", "hi", *args)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert error in r.stderr


def test_cli_image_without_prompt(container: Path) -> None:
    r = wstream("run", container, "--image", GOLDEN / CASES["cases"][0]["image"])
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "--prompt" in r.stderr


def test_cli_missing_image_and_no_tokenizer(container: Path, bare_container: Path) -> None:
    r = wstream("run", container, "--image", "/nonexistent.png", "--prompt", "hi")
    assert r.returncode == 1 and "/nonexistent.png" in r.stderr and r.stderr.count("\n") == 1
    r = wstream("run", bare_container, "--prompt", "hi")
    assert r.returncode == 1 and "MissingModelFile" in r.stderr and r.stderr.count("\n") == 1


def test_prompt_longer_than_the_context(container: Path) -> None:
    with Model.open(container) as model:
        context = model.files.context
        with pytest.raises(InputError, match="context"):
            model.prepare("a " * (4 * context))
