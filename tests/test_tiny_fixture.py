"""The trained tiny MiniCPM-V 2.6 fixture is well formed (no torch needed).

wstream/data/minicpmv-tiny/ is an HF checkpoint directory written by tools/train_tiny.py, and
tests/golden/minicpmv-tiny/ its held-out cases and float64 torch outputs. Here: every file is
present and parses; config.json is accepted by the config parser; the weights are bf16 with
exactly the 2.6 tensor names and shapes and pack into a container; the tokenizer files agree on
the special-token ids; the golden references are consistent with the fixture (spans, slice
counts, ids in range). The answers themselves are the end-to-end tests' business.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from qwen_vocab import ADDED

from wstream import open_container
from wstream.model.config import from_hf, tensor_shapes
from wstream.pack import pack

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "wstream" / "data" / "minicpmv-tiny"
GOLDEN = ROOT / "tests" / "golden" / "minicpmv-tiny"
JSON_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "generation_config.json",
)
# MiniCPM-V 2.6's added tokens (added_tokens.json) plus <unk>, in the real id order.
SPECIAL = ["<unk>", *ADDED]


def load(name: str) -> Any:
    return json.loads((FIXTURE / name).read_text(encoding="utf-8"))


def safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def special_ids() -> dict[str, int]:
    added = load("tokenizer.json")["added_tokens"]
    return {t["content"]: t["id"] for t in added}


def test_every_file_is_present_and_parses() -> None:
    for name in JSON_FILES:
        assert isinstance(load(name), dict), name
    assert (FIXTURE / "model.safetensors").stat().st_size < 4 << 20  # a few MB at most


def test_config_is_accepted_and_matches_the_weights() -> None:
    cfg = from_hf(load("config.json"))
    assert (cfg.vision.hidden, cfg.vision.layers, cfg.vision.grid) == (64, 4, 70)
    assert (cfg.resampler.queries, cfg.resampler.dim, cfg.resampler.heads) == (16, 128, 1)
    assert (cfg.decoder.hidden, cfg.decoder.layers, cfg.decoder.heads) == (128, 2, 4)
    assert cfg.decoder.kv_heads == 2
    header = safetensors_header(FIXTURE / "model.safetensors")
    want = tensor_shapes(cfg)
    assert set(header) == set(want)
    for name, info in header.items():
        assert info["dtype"] == "BF16", name
        assert tuple(info["shape"]) == want[name], name
    assert want["llm.model.embed_tokens.weight"][0] == len(
        load("tokenizer.json")["model"]["vocab"]
    ) + len(load("tokenizer.json")["added_tokens"])


def test_the_fixture_packs_with_the_real_names(tmp_path: Path) -> None:
    out = tmp_path / "tiny.wst"
    pack(FIXTURE, out)
    with open_container(out) as c:
        names = set(c.keys())
        assert names == set(tensor_shapes(from_hf(load("config.json"))))
        assert {n.split(".")[0] for n in names} == {"vpm", "resampler", "llm"}
        assert "llm.lm_head.weight" in names and "resampler.pos_embed" not in names
        assert c.tensor("resampler.query").shape == (16, 128)


def test_tokenizer_files_agree_on_the_special_tokens() -> None:
    ids = special_ids()
    assert list(ids) == SPECIAL  # every 2.6 special token, in the 2.6 order
    assert sorted(ids.values()) == list(ids.values())
    tok = load("tokenizer.json")
    assert all(t["special"] and not t["normalized"] for t in tok["added_tokens"])
    assert tok["model"]["type"] == "BPE"
    assert tok["pre_tokenizer"]["pretokenizers"][1]["type"] == "ByteLevel"
    tc = load("tokenizer_config.json")
    assert {int(k): v["content"] for k, v in tc["added_tokens_decoder"].items()} == {
        i: t for t, i in ids.items()
    }
    assert (tc["eos_token"], tc["pad_token"], tc["unk_token"]) == (
        "<|im_end|>",
        "<|endoftext|>",
        "<unk>",
    )
    assert "<|im_start|>" in tc["chat_template"] and "add_generation_prompt" in tc["chat_template"]
    gen, cfg = load("generation_config.json"), load("config.json")
    # 2.6: eos 151645 = <|im_end|>, bos 151643 = <|endoftext|>
    assert gen["eos_token_id"] == cfg["eos_token_id"] == ids["<|im_end|>"]
    assert gen["bos_token_id"] == cfg["bos_token_id"] == ids["<|endoftext|>"]
    stm = load("special_tokens_map.json")
    assert stm["eos_token"]["content"] == "<|im_end|>"


def test_preprocessor_config_has_the_26_keys() -> None:
    pp, cfg = load("preprocessor_config.json"), load("config.json")
    assert pp["scale_resolution"] == 112 and pp["patch_size"] == 14
    assert pp["image_feature_size"] == cfg["query_num"]
    assert pp["max_slice_nums"] == cfg["slice_config"]["max_slice_nums"] == 9
    assert pp["use_image_id"] is cfg["use_image_id"] is True
    assert pp["slice_mode"] is cfg["slice_mode"] is True
    assert pp["norm_mean"] == pp["norm_std"] == [0.5, 0.5, 0.5]
    tokens = ("im_start", "im_end", "slice_start", "slice_end", "unk", "im_id_start", "im_id_end")
    assert all(pp[k] in special_ids() for k in tokens)


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((GOLDEN / "cases.json").read_text(encoding="utf-8"))
    return meta


def test_held_out_cases_are_images_with_questions(golden: dict[str, Any]) -> None:
    cases = golden["cases"]
    assert len(cases) >= 30
    assert {c["kind"] for c in cases} == set(golden["kinds"])
    assert len({c["name"] for c in cases}) == len(cases)
    assert max(c["slices"] for c in cases) >= 7 and min(c["slices"] for c in cases) == 1
    for c in cases:
        with Image.open(GOLDEN / c["image"]) as img:
            assert img.format == "PNG" and img.size == (c["width"], c["height"])
        assert c["question"] and c["answer"]
    total = sum((GOLDEN / c["image"]).stat().st_size for c in cases)
    assert total < 2 << 20


def test_references_are_consistent(golden: dict[str, Any]) -> None:
    ids = special_ids()
    vocab = load("config.json")["vocab_size"]
    q = load("config.json")["query_num"]
    refs = golden["references"]
    rows = {c["name"]: c for c in golden["cases"]}
    assert len(refs) >= 2 and max(len(r["tgt_sizes"]) for r in refs.values()) >= 4
    for name, r in refs.items():
        n = rows[name]["slices"]
        assert len(r["tgt_sizes"]) == len(r["slice_sizes"]) == len(r["image_bound"]) == n
        for (w, h), (th, tw) in zip(r["slice_sizes"], r["tgt_sizes"]):
            assert (w, h) == (tw * 14, th * 14)
        tokens = r["input_ids"]
        assert all(0 <= t < vocab for t in tokens)
        for s, e in r["image_bound"]:
            assert e - s == q
            assert tokens[s - 1] in (ids["<image>"], ids["<slice>"])
            assert set(tokens[s:e]) == {ids["<unk>"]}
        assert tokens.count(ids["<unk>"]) == q * n
        arrays = np.load(GOLDEN / f"{name}.npz")
        assert arrays["prefill_logits"].shape == (len(tokens), vocab)
        assert arrays["image_features"].shape == (n, q, load("config.json")["hidden_size"])
        assert int(arrays["prefill_logits"][-1].argmax()) == r["answer_ids"][0]
        for i, (w, h) in enumerate(r["slice_sizes"]):
            assert arrays[f"slice_{i}"].shape == (h, w, 3)
        assert r["answer_ids"][-1] == ids["<|im_end|>"]
