"""The tiny MiniCPM-V fixture on disk: export (bf16 weights, HF files, golden cases) and check.

``export`` writes wstream/data/minicpmv-tiny/ (an HF checkpoint directory with the 2.6 file set)
and tests/golden/minicpmv-tiny/ (held-out PNGs, cases.json, float64 reference outputs) from a
training run; ``check`` rebuilds every golden output from the committed files alone. Run both
through tools/train_tiny.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tiny_data
import tiny_reference as ref
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_request import (
    CHAT_TEMPLATE,
    MAX_NEW_TOKENS,
    PROCESSOR,
    SPECIAL_TOKENS,
    decode_answer,
    encode,
    evaluate,
    run_greedy,
    special_ids,
    stop_ids,
)
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "wstream" / "data" / "minicpmv-tiny"
GOLDEN = ROOT / "tests" / "golden" / "minicpmv-tiny"


# --- the fixture ----------------------------------------------------------------------------------


def hf_files(tok: Tokenizer, dims: ref.Dims) -> dict[str, dict[str, Any]]:
    """config.json, tokenizer_config.json, special_tokens_map.json, preprocessor_config.json and
    generation_config.json with the keys of the 2.6 files (tiny values; ids are this vocab's).
    No auto_map: the remote-code .py files are not shipped, so nothing may point at them."""
    ids = special_ids(tok)
    p = PROCESSOR
    config = {
        "_name_or_path": "wstream/minicpmv-tiny",
        "version": 2.6,
        "architectures": ["MiniCPMV"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": dims.hidden,
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate,
        "max_position_embeddings": 32768,
        "max_window_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_hidden_layers": dims.layers,
        "num_key_value_heads": dims.kv_heads,
        "rms_norm_eps": dims.eps,
        "rope_scaling": None,
        "rope_theta": dims.rope_theta,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": dims.vocab,
        "batch_vision_input": True,
        "drop_vision_last_layer": False,
        "image_size": p.scale_resolution,
        "model_type": "minicpmv",
        "patch_size": p.patch_size,
        "query_num": dims.query_num,
        "slice_config": {
            "max_slice_nums": p.max_slice_nums,
            "patch_size": p.patch_size,
            "model_type": "minicpmv",
        },
        "slice_mode": p.slice_mode,
        "use_image_id": p.use_image_id,
        "vision_batch_size": 16,
        "vision_config": {
            "hidden_size": dims.vision_hidden,
            "image_size": dims.vision_image_size,
            "intermediate_size": dims.vision_intermediate,
            "model_type": "siglip",
            "num_attention_heads": dims.vision_heads,
            "num_hidden_layers": dims.vision_layers,
            "patch_size": dims.patch,
        },
    }
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in ids.items()
    }
    extra = [t for t in SPECIAL_TOKENS if t not in ("<unk>", "<|endoftext|>")]
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": extra,
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        # 2.6 names MiniCPMVTokenizerFast, a remote-code subclass of this that only adds
        # attribute names; without the .py file the base class is what loads.
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": "<unk>",
    }

    def entry(t: str) -> dict[str, Any]:
        return {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    special_tokens_map = {
        "additional_special_tokens": extra,
        "bos_token": entry("<|im_start|>"),
        "eos_token": entry("<|im_end|>"),
        "pad_token": entry("<|endoftext|>"),
        "unk_token": entry("<unk>"),
    }
    preprocessor_config = {
        "image_processor_type": "MiniCPMVImageProcessor",
        "processor_class": "MiniCPMVProcessor",
        "max_slice_nums": p.max_slice_nums,
        "scale_resolution": p.scale_resolution,
        "patch_size": p.patch_size,
        "use_image_id": p.use_image_id,
        "image_feature_size": p.image_feature_size,
        "im_start": p.im_start,
        "im_end": p.im_end,
        "slice_start": p.slice_start,
        "slice_end": p.slice_end,
        "unk": p.unk,
        "im_id_start": p.im_id_start,
        "im_id_end": p.im_id_end,
        "slice_mode": p.slice_mode,
        "norm_mean": list(p.norm_mean),
        "norm_std": list(p.norm_std),
        "version": 2.6,
    }
    generation_config = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    return {
        "config.json": config,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_tokens_map,
        "preprocessor_config.json": preprocessor_config,
        "generation_config.json": generation_config,
    }


@dataclass
class Loaded:
    tok: Tokenizer
    proc: ref.Processor
    template: str
    model: ref.MiniCPMV


def load_fixture(directory: Path, dtype: torch.dtype) -> Loaded:
    """Everything from the committed files alone (what --check and the golden outputs use)."""
    cfg = json.loads((directory / "config.json").read_text())
    pp = json.loads((directory / "preprocessor_config.json").read_text())
    tc = json.loads((directory / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    v = cfg["vision_config"]
    dims = ref.Dims(
        vision_hidden=v["hidden_size"],
        vision_intermediate=v["intermediate_size"],
        vision_heads=v["num_attention_heads"],
        vision_layers=v["num_hidden_layers"],
        vision_image_size=v["image_size"],
        patch=v["patch_size"],
        query_num=cfg["query_num"],
        hidden=cfg["hidden_size"],
        intermediate=cfg["intermediate_size"],
        heads=cfg["num_attention_heads"],
        kv_heads=cfg["num_key_value_heads"],
        layers=cfg["num_hidden_layers"],
        vocab=cfg["vocab_size"],
        rope_theta=cfg["rope_theta"],
        eps=cfg["rms_norm_eps"],
    )
    proc = ref.Processor(
        max_slice_nums=pp["max_slice_nums"],
        scale_resolution=pp["scale_resolution"],
        patch_size=pp["patch_size"],
        image_feature_size=pp["image_feature_size"],
        use_image_id=pp["use_image_id"],
        slice_mode=pp["slice_mode"],
        norm_mean=tuple(pp["norm_mean"]),
        norm_std=tuple(pp["norm_std"]),
    )
    model = ref.MiniCPMV(dims).to(dtype).eval()
    weights = {k: t.to(dtype) for k, t in load_file(str(directory / "model.safetensors")).items()}
    model.load_state_dict(weights, strict=True)
    return Loaded(tok, proc, tc["chat_template"], model)


def reference(f: Loaded, image: Image.Image, question: str) -> dict[str, Any]:
    """The float64 outputs of one request (f loaded in float64)."""
    enc = encode(f.tok, image, question, f.proc, f.template)
    with torch.no_grad():
        px, tgt = ref.as_tensors(enc.pixel_values, enc.tgt_sizes, torch.float64)
        feats = f.model.image_features(px, tgt)
        emb = f.model.embed(torch.tensor([enc.ids]), [enc.bounds], feats)
        logits, answer, margins = ref.greedy(f.model, emb, stop_ids(f.tok), MAX_NEW_TOKENS)
    rgb = image.convert("RGB")
    slices = [np.asarray(s, dtype=np.uint8) for s in f.proc.get_sliced_images(rgb)]
    return {
        "prompt": enc.prompt,
        "input_ids": enc.ids,
        "grid": f.proc.get_sliced_grid(rgb.size, f.proc.max_slice_nums),
        "slice_sizes": [[s.shape[1], s.shape[0]] for s in slices],  # (W, H) px
        "tgt_sizes": [list(t) for t in enc.tgt_sizes],
        "image_bound": [list(b) for b in enc.bounds],
        "answer_ids": answer,
        "answer": decode_answer(f.tok, answer),
        "min_greedy_margin": min(margins),
        "max_abs_logit": float(logits.abs().max()),
        "arrays": {
            "prefill_logits": logits.to(torch.float32).numpy(),
            "image_features": feats.to(torch.float32).numpy(),
            **{f"slice_{i}": s for i, s in enumerate(slices)},
        },
    }


def pick_references(cases: list[dict[str, Any]]) -> list[str]:
    """One single-slice case, the case with the most slices, and one with 4-7 slices."""
    by = sorted(cases, key=lambda c: c["slices"])
    picks = [by[0], by[-1]]
    mid = [
        c for c in cases if 4 <= c["slices"] <= 7 and c["kind"] not in {p["kind"] for p in picks}
    ]
    picks += mid[:1] or [c for c in cases if 4 <= c["slices"] <= 7][:1]
    return [c["name"] for c in picks]


def export(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    work: Path = args.work
    tok = Tokenizer.from_file(str(work / "tokenizer.json"))
    dims = ref.build_dims(tok.get_vocab_size(with_added_tokens=True))
    f32 = load_file(str(work / "model-f32.safetensors"))
    model = ref.MiniCPMV(dims).float().eval()
    model.load_state_dict(f32, strict=True)
    cases = [c for c in tiny_data.held_out(args.held_out) if c.kind in args.kinds]
    acc_f32 = evaluate(model, tok, cases, torch.float32)
    print(f"held-out, float32 weights: {acc_f32}", flush=True)

    FIXTURE.mkdir(parents=True, exist_ok=True)
    bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in f32.items()}
    save_file(bf16, str(FIXTURE / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(FIXTURE / "tokenizer.json"))
    for name, content in hf_files(tok, dims).items():
        (FIXTURE / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    verify_with_transformers(FIXTURE)

    f = load_fixture(FIXTURE, torch.float64)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for old in list(GOLDEN.glob("*.png")) + list(GOLDEN.glob("*.npz")):
        old.unlink()
    rows: list[dict[str, Any]] = []
    right: dict[str, list[bool]] = {k: [] for k in args.kinds}
    for i, case in enumerate(cases):
        name = f"case-{i:03d}"
        tiny_data.render(case).save(GOLDEN / f"{name}.png", optimize=True)
        image = Image.open(GOLDEN / f"{name}.png")
        enc = encode(f.tok, image, case.question, f.proc, f.template)
        _, ids, margins = run_greedy(f.model, f.tok, enc, torch.float64)
        answer = decode_answer(f.tok, ids)
        right[case.kind].append(answer == case.answer)
        rows.append(
            {
                "name": name,
                "kind": case.kind,
                "image": f"{name}.png",
                "width": case.width,
                "height": case.height,
                "slices": len(enc.tgt_sizes),
                "question": case.question,
                "answer": case.answer,
                "reference_answer": answer,
                "reference_answer_ids": ids,
                "min_greedy_margin": min(margins),
            }
        )
    acc_bf16 = {k: sum(v) / len(v) for k, v in right.items()}
    print(f"held-out, bf16 weights (float64 forward): {acc_bf16}", flush=True)
    refs = {}
    for name in pick_references(rows):
        row = next(r for r in rows if r["name"] == name)
        out = reference(f, Image.open(GOLDEN / row["image"]), row["question"])
        np.savez_compressed(GOLDEN / f"{name}.npz", **out.pop("arrays"))
        refs[name] = out
        print(f"reference {name}: {row['slices']} slices, answer {out['answer']!r}", flush=True)
    log = json.loads((work / "train_log.json").read_text())
    meta = {
        "generator": "tools/train_tiny.py export",
        "torch": torch.__version__,
        "parameters": sum(v.numel() for v in bf16.values()),
        "weights_sha256": sha256(FIXTURE / "model.safetensors"),
        "training": {
            "steps": log["log"][-1]["step"],
            "seconds": log["log"][-1]["seconds"],
            "args": log["args"],
        },
        "held_out_accuracy": {"float32": acc_f32, "bf16": acc_bf16},
        "kinds": list(args.kinds),
        "cases": rows,
        "references": refs,
    }
    (GOLDEN / "cases.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_with_transformers(directory: Path) -> None:
    """transformers must read the tokenizer files as this script does: same template text,
    same ids (a second, independent reading of tokenizer_config.json)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory))
    tc = json.loads((directory / "tokenizer_config.json").read_text())
    msgs = [{"role": "user", "content": ref.user_content(1, "How many shapes are there?")}]
    ours = ref.render_chat(tc["chat_template"], msgs)
    theirs = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if ours != theirs:
        raise SystemExit(f"chat template renders differently in transformers:\n{theirs!r}")
    text = ref.expand_images(PROCESSOR, ours, [(300, 200)])
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    if hf.encode(text, add_special_tokens=False) != tok.encode(text, add_special_tokens=False).ids:
        raise SystemExit("transformers encodes the prompt differently")
    if hf.unk_token_id != tok.token_to_id("<unk>"):
        raise SystemExit("transformers reads another <unk> id")


def check(threads: int) -> int:
    """Recompute the golden outputs from the committed fixture (float64) and compare."""
    torch.set_num_threads(threads)
    meta = json.loads((GOLDEN / "cases.json").read_text())
    problems = []
    if sha256(FIXTURE / "model.safetensors") != meta["weights_sha256"]:
        problems.append("model.safetensors sha256 differs from cases.json")
    f = load_fixture(FIXTURE, torch.float64)
    right: dict[str, list[bool]] = {}
    for row in meta["cases"]:
        image = Image.open(GOLDEN / row["image"])
        enc = encode(f.tok, image, row["question"], f.proc, f.template)
        _, ids, _ = run_greedy(f.model, f.tok, enc, torch.float64)
        if ids != row["reference_answer_ids"]:
            problems.append(f"{row['name']}: answer ids {ids} != {row['reference_answer_ids']}")
        right.setdefault(row["kind"], []).append(decode_answer(f.tok, ids) == row["answer"])
    for name, want in meta["references"].items():
        row = next(r for r in meta["cases"] if r["name"] == name)
        got = reference(f, Image.open(GOLDEN / row["image"]), row["question"])
        arrays = got.pop("arrays")
        for key in (
            "prompt",
            "input_ids",
            "grid",
            "slice_sizes",
            "tgt_sizes",
            "image_bound",
            "answer_ids",
            "answer",
        ):
            if got[key] != want[key]:
                problems.append(f"{name}: {key} differs")
        stored = np.load(GOLDEN / f"{name}.npz")
        for key, value in arrays.items():
            if value.dtype == np.uint8:
                ok = np.array_equal(stored[key], value)
            else:
                scale = float(np.abs(value).max())
                ok = float(np.abs(stored[key] - value).max()) <= 1e-6 * scale
            if not ok:
                problems.append(f"{name}: {key} differs")
        print(f"{name}: {len(want['tgt_sizes'])} slices checked", flush=True)
    acc = {k: sum(v) / len(v) for k, v in right.items()}
    print(f"held-out accuracy (bf16 weights, float64): {acc}")
    for p in problems:
        print(f"MISMATCH {p}")
    print("ok" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0
