"""The harness's outputs: bench/RESULTS.md (markdown tables) and the memory-over-time plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MiB = 1 << 20
PLOTTED = ("a", "e-k2", "g")  # the memory plot's contenders
COLOURS = {"a": "#c0392b", "e-k2": "#2471a3", "g": "#229954"}

HOLDS = {
    "a": "Every tensor: `load_file` copies each shard out of its mapping (bf16), then each tensor "
    "is widened to float32 and its bf16 copy dropped, all before the forward starts; the "
    "forward then reads the float32 dict. Holds {f32} of float32 weights for the whole run "
    "(the bf16 file is {bf16}); at the switch it held both the file's pages and the copies.",
    "b": "One group at a time: each tensor's `get_tensor` (a bf16 copy out of the mapping) is "
    "widened when the forward asks for its group and freed after use. The shards stay "
    "mapped, so every page read stays in RSS as file pages until the end (see peak RSS vs "
    "peak anon).",
    "c": "One group at a time: each tensor's mmap-ninja `np.memmap` is opened when its group is "
    "asked for, widened to float32 straight from the mapping (no bf16 copy) and unmapped "
    "after; file pages leave RSS with the mapping.",
    "d": "One group at a time: the group's own safetensors file is `load_file`d (bf16 copies), "
    "widened and freed after use; nothing is read ahead.",
    "wstream": "At most the budget ({budget}) of pooled slabs: the chunk in use plus up to k "
    "chunks read ahead by 2 worker threads, already widened (and decoded or "
    "dequantized) to float32; mapped pages are dropped once a chunk is decoded. In the "
    "decode loop the part of the budget not needed for the window keeps a fixed subset "
    "of LLM chunks resident; the rest is re-read every token.",
}


def thin(trace: Sequence[Sequence[float]], points: int = 800) -> list[list[float]]:
    """At most ``points`` samples [t, rss MiB, anon MiB]: the max of each bin, so peaks survive."""
    if not trace:
        return []
    step = max(1, len(trace) // points)
    out = []
    for i in range(0, len(trace), step):
        part = trace[i : i + step]
        out.append(
            [
                round(part[0][0], 4),
                round(max(p[1] for p in part) / MiB, 1),
                round(max(p[2] for p in part) / MiB, 1),
            ]
        )
    return out


def plot_memory(
    traces: dict[str, list[list[float]]], path: Path, log: Callable[[str], None]
) -> bool:
    """RSS (solid) and RssAnon (dashed) over time of a, e-k2 and g, one panel per cache state."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  no plot: matplotlib is not installed (pip install -e '.[bench]')")
        return False
    caches = [c for c in ("warm", "cold") if any(k.endswith("/" + c) for k in traces)]
    if not caches:
        return False
    fig, axes = plt.subplots(
        1, len(caches), figsize=(6.5 * len(caches), 4.2), squeeze=False, sharey=True
    )
    for ax, cache in zip(axes[0], caches):
        for key in PLOTTED:
            tr = traces.get(f"{key}/{cache}")
            if not tr:
                continue
            t = [p[0] for p in tr]
            colour = COLOURS[key]
            ax.plot(t, [p[1] for p in tr], color=colour, lw=1.4, label=f"{key}: RSS")
            ax.plot(t, [p[2] for p in tr], color=colour, lw=1.0, ls="--", label=f"{key}: anon")
        ax.axvline(0, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{cache} page cache")
        ax.set_xlabel("seconds since the measured section started (imports before 0)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MiB")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        "Memory over time: (a) safetensors load_file, (e) wstream raw k=2, (g) wstream INT8 k=2",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_json(results: dict[str, Any], path: Path) -> None:
    """Indented, except the memory traces: one line each (they are thousands of numbers)."""
    import json

    rest = {k: v for k, v in results.items() if k != "traces"}
    text = json.dumps(rest, indent=1)
    traces = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
        for k, v in results.get("traces", {}).items()
    )
    path.write_text(text[:-2] + ',\n "traces": {\n' + traces + "\n }\n}\n")


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB"


def _x(v: float | None) -> str:
    return "" if v is None else f" ({v:.2f}x)"


def table(summary: dict[str, Any], contenders: dict[str, Any], cache: str) -> list[str]:
    lines = [
        "| contender | peak RSS | peak anon | first layer | total | stall | bytes read | "
        "from disk | logits vs (a) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in contenders.items():
        e = summary.get(f"{key}/{cache}")
        if e is None:
            continue
        name = f"({key}) {c['label']}"
        if not e["runs"]:
            error = e.get("error", "").replace("|", "/")
            lines.append(f"| {name} | failed: {error} | | | | | | | |")
            continue
        ok = "" if e["check_ok"] else " **differs**" if key == "g" else " **FAIL**"
        lines.append(
            f"| {name} | {_mib(e['peak_rss'])}{_x(e['peak_rss_x'])} | "
            f"{_mib(e['peak_anon'])}{_x(e['peak_anon_x'])} | "
            f"{e['first_layer_s']:.2f} s{_x(e['first_layer_s_x'])} | "
            f"{e['total_s']:.2f} s{_x(e['total_s_x'])} | "
            f"{e['stall_s']:.2f} s{_x(e['stall_s_x'])} | "
            f"{e['bytes_read'] / 1e9:.2f} GB{_x(e['bytes_read_x'])} | "
            f"{e['disk_read_bytes'] / 1e9:.2f} GB | {e['check']}{ok} |"
        )
    return lines


def headline(summary: dict[str, Any], caches: list[str]) -> list[str]:
    out = []
    for key, label in (
        ("e-k2", "wstream raw, prefetch 2"),
        ("f", "wstream zstd+bytegroup"),
        ("g", "wstream INT8"),
    ):
        parts = []
        for cache in caches:
            e = summary.get(f"{key}/{cache}")
            if e and e["runs"] and e.get("peak_rss_x") and e.get("total_s_x"):
                parts.append(
                    f"{cache}: peak RSS **{e['peak_rss_x']:.2f}x**, time **{e['total_s_x']:.2f}x**"
                )
        if parts:
            out.append(f"- ({key}) {label} vs (a) safetensors load-everything: " + "; ".join(parts))
    return out


def _busy(r: dict[str, Any]) -> str:
    runs = [x for v in r["runs"].values() for x in v if "busy_before" in x]
    busy = [x for x in runs if x["busy_before"] > 0.3]
    return (
        f"{len(busy)} of {len(runs)} runs started while other processes kept more than 30% of "
        "the CPUs busy (after waiting up to --quiet-timeout for them)"
    )


def write_markdown(r: dict[str, Any], path: Path) -> None:
    s, m = r["settings"], r["model"]
    caches = s["caches"]
    bf16 = m["stored_bytes"]
    holds = {k: HOLDS[k] for k, c in r["contenders"].items() if c["kind"] != "wstream"}
    streamed = [k for k, c in r["contenders"].items() if c["kind"] == "wstream"]
    if streamed:
        holds[", ".join(streamed)] = HOLDS["wstream"]
    fmt = {"f32": _mib(2 * bf16), "bf16": _mib(bf16), "budget": _mib(s["budget_bytes"])}
    lines = [
        "# wstream against its peers",
        "",
        "Written by `bench/harness.py` (see its docstring); rerun it with the command below.",
        "",
        f"- Command: `{r['command']}`",
        f"- Date: {r['date']}; whole run {r['elapsed_s']:.0f} s",
        f"- Machine: {r['machine']} (shared with other work: each run waited for the CPUs to "
        "quieten, and every ratio is against (a) in the same round); a fresh process first "
        "touched new memory at "
        + " and ".join(f"{g:.2f}" for g in r["fault_gbps"])
        + " GB/s (before and after the runs; see the note below)",
        f"- Code: {r['code']}",
        f"- Model: MiniCPM-V 2.6-shaped, random weights, real tensor names; {m['description']}",
        "- Request: one 448 x 448 image slice (1024 patches -> "
        f"{m['config']['resampler']['queries']} resampler tokens) + {s['text_ids']} text tokens, "
        f"then {s['new_tokens']} greedy tokens; "
        "the same numpy forward (`wstream.model.vlm.generate`) for every contender",
        f"- wstream: StreamingLoader budget {_mib(s['budget_bytes'])} (a quarter of the bf16 "
        f"checkpoint), chunks of at most {s['max_chunk']}, {s['workers']} worker threads, k = "
        "prefetch depth",
        f"- Rounds: {s['repeats']} (medians; ratios are medians of per-round ratios); {_busy(r)}",
        "",
        "## Headline",
        "",
        *headline(r["summary"], caches),
        "",
    ]
    for cache in caches:
        lines += [f"## {cache.capitalize()} page cache", ""]
        lines += table(r["summary"], r["contenders"], cache)
        lines.append("")
    if r.get("plot"):
        lines += [
            "## Memory over time",
            "",
            "![RSS over time](results/memory.png)",
            "",
            "Solid: total RSS (file pages included); dashed: RssAnon (private memory). "
            "Sampled by the parent every 2 ms; the first round's runs.",
            "",
        ]
    lines += ["## What each contender holds", ""]
    lines += [f"- **({k})** {v.format(**fmt)}" for k, v in holds.items()]
    before = sorted(x["rss_before"] for v in r["runs"].values() for x in v if "rss_before" in x)
    base = f"{_mib(before[0])} to {_mib(before[-1])}" if before else "?"
    a_up = [x["upfront_s"] for c in caches for x in r["runs"].get(f"a/{c}", []) if "upfront_s" in x]
    rates = " / ".join(f"{g:.2f}" for g in r["fault_gbps"])
    if s.get("as_found_memory"):
        state = (
            "This run used `--as-found-memory`: before a warm run the other data files stayed "
            "cached, while a cold run starts right after the page cache dropped every data file."
        )
    else:
        state = (
            "So that warm and cold runs start from the same free memory, the harness drops "
            "every data file a contender does not read before its warm run, as it drops every "
            "file before a cold run (`--as-found-memory` skips that for warm runs; then only the "
            "cold runs start with just-dropped pages, which are faster to touch)."
        )
    lines += [
        "",
        "## Note: new memory is slow to touch on this machine",
        "",
        "This VM's virtio-balloon reports free pages to the host, which takes them back, so the "
        "first touch of a page can cost a host page fault. A fresh process touched 512 MiB of "
        f"new memory at {rates} GB/s at the start and the end of this run (a buffer already "
        "touched takes writes at memory speed, over 10 GB/s; the rate for new memory varies "
        "by an order of magnitude with the VM's state). Every byte a loader allocates anew "
        "pays this: (a) allocates three times the bf16 size of the model (bf16 copies, then "
        "float32; it spent " + ", ".join(f"{u:.1f}" for u in a_up) + " s loading and widening "
        "before its first layer in these runs), the lazy peers allocate fresh arrays for every "
        "tensor on every pass, and wstream widens into pooled slabs that are touched once and "
        "then reused. Time ratios against (a) are therefore lower here than on a machine whose "
        "new memory is fast; peak-memory ratios are not affected. " + state,
    ]
    lines += [
        "",
        "## How it is measured",
        "",
        "- Each contender runs in a fresh `python bench/_contenders.py` process. The measured "
        "section starts after its imports and inputs, with VmHWM reset (`/proc/self/clear_refs` "
        f"5) to the RSS at that point ({base}: the interpreter, numpy and the contender's "
        "imports; it is part of every peak).",
        "- **peak RSS**: the child's VmHWM at the end (total RSS: mapped file pages count). "
        "**peak anon**: the parent's 2 ms samples of RssAnon (private memory, whole process).",
        "- **first layer**: from the section's start to the first chunk handed to the forward "
        "(for (a), after everything is loaded and widened). **total**: section start to the end "
        "of `generate`.",
        "- **stall**: time the forward waited for weights: time inside the weight stream's "
        "`next()` (the same wrapper for every contender), plus (a)'s up-front load.",
        "- **bytes read**: stored bytes each contender read (tensors fetched; wstream's "
        "`StreamStats.bytes_read`), page-cache hits included. **from disk**: `/proc/<pid>/io` "
        "read_bytes, which counts only reads that reached the device (so about 0 when warm).",
        "- **logits**: prefill logits, each decode step's logits and the greedy tokens against "
        "(a)'s. Lossless contenders must be bitwise equal or within 1e-6 of max |logit|; INT8 "
        "needs cosine >= 0.999 on the prefill logits and the same tokens. wstream's containers "
        "hold tensors larger than a chunk as row blocks, and a product taken block by block can "
        "round differently in the last bit from one over the whole matrix.",
        "- **cold**: every data file fsynced and dropped (`POSIX_FADV_DONTNEED`) before the run; "
        "the 'cached' fraction in the progress line is mincore's residency just before it.",
        "",
    ]
    path.write_text("\n".join(lines))
