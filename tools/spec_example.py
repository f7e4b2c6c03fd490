"""Regenerate the worked example of formats/SPEC.md (appendix C) from the reference packer.

    python tools/spec_example.py [--check]

Packs the example checkpoint that appendix C shows, then rewrites the three generated parts of
SPEC.md in place: the manifest (after ``<!-- example-manifest -->``), the file map table (after
``<!-- example-filemap -->``) and the preamble hex dump and field table (after
``<!-- example-preamble -->``). The prose around them is written by hand: re-read it after a
run. With ``--check`` nothing is written; the exit status says whether SPEC.md is current.
tests/test_schema.py checks that the committed example is a valid, self-consistent file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wstream.container.reader import Container  # noqa: E402
from wstream.format import spec  # noqa: E402
from wstream.pack import pack  # noqa: E402

SPEC = ROOT / "formats" / "SPEC.md"


def build(tmp: Path) -> Path:
    """The example of appendix C, exactly as its code block shows it."""
    src = tmp / "tiny"
    src.mkdir()
    rows = (np.arange(512 * 64, dtype=np.float32) % 251).reshape(512, 64)
    wq = (np.arange(64 * 64) % 7).astype(ml_dtypes.bfloat16).reshape(64, 64)
    save_file(
        {
            "tok_embeddings.weight": rows,
            "norm.weight": np.ones(64, np.float32),
            "layers.0.attention.wq.weight": wq,
            "layers.0.attention_norm.weight": np.ones(64, ml_dtypes.bfloat16),
        },
        str(src / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = {"model_type": "tiny", "hidden_size": 64, "num_hidden_layers": 1}
    (src / "config.json").write_text(json.dumps(config))
    out = tmp / "tiny.wst"
    pack(src, out, codec="zstd", shuffle=True, quantize="int8", max_chunk=64 * 1024)
    return out


def manifest_block(doc: dict) -> str:
    """The manifest with one line per chunk field group and per tensor, as the spec shows it."""
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(", ", ": "))  # noqa: E731
    lines = ["{"]
    for key in ("writer", "lossy", "config", "metadata"):
        lines.append(f'  "{key}": {dump(doc[key])},')
    lines.append('  "chunks": [')
    for i, ch in enumerate(doc["chunks"]):
        lines += [
            "    {",
            f'      "name": {dump(ch["name"])}, "group": {dump(ch["group"])},',
            f'      "offset": {ch["offset"]}, "nbytes": {ch["nbytes"]}, '
            f'"raw_nbytes": {ch["raw_nbytes"]}, "crc32": {ch["crc32"]},',
            f'      "codec": {dump(ch["codec"])},',
            '      "tensors": [',
        ]
        tensors = [f"        {dump(t)}" for t in ch["tensors"]]
        lines.append(",\n".join(tensors))
        lines += ["      ]", "    }" + ("," if i + 1 < len(doc["chunks"]) else "")]
    lines += ["  ]", "}"]
    return "\n".join(lines)


def file_map(path: Path) -> str:
    with Container(path) as c:
        chunks = c.manifest.chunks
        m_off, m_len, size = c.preamble.manifest_offset, c.preamble.manifest_nbytes, c.file_size
    rows = ["| file offsets | contents |", "|---|---|", "| `[0, 64)` | preamble |"]
    rows.append(f"| `[64, {spec.DATA_START})` | zero |")
    for i, ch in enumerate(chunks):
        end = ch.offset + ch.nbytes
        nxt = chunks[i + 1].offset if i + 1 < len(chunks) else m_off
        tail = f", then zero to {nxt}" if nxt > end else ""
        span = f"`[{ch.offset}, {end})`"
        rows.append(f"| {span} | chunk `{ch.name}` ({ch.nbytes} stored bytes){tail} |")
    last = f"manifest ({m_len} bytes); the file is {size} bytes long"
    rows.append(f"| `[{m_off}, {size})` | {last} |")
    return "\n".join(rows)


def preamble_block(head: bytes) -> str:
    out = []
    for at in range(0, len(head), 16):
        row = head[at : at + 16]
        left = " ".join(f"{b:02x}" for b in row[:8])
        right = " ".join(f"{b:02x}" for b in row[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        out.append(f"{at:08x}  {left}  {right}  |{text}|")
    return "\n".join(out)


def preamble_table(head: bytes) -> str:
    _, version, flags, m_off, m_len, m_crc, _, p_crc = spec.PREAMBLE.unpack(head)
    hexb = lambda a, b: " ".join(f"{x:02x}" for x in head[a:b])  # noqa: E731
    hexx = lambda v: f"{v:#010X}".replace("0X", "0x")  # noqa: E731
    return "\n".join(
        [
            "| offset | bytes | field | value |",
            "|---|---|---|---|",
            f"| 0 | `{hexb(0, 8)}` | `magic` | `MAGIC` |",
            f"| 8 | `{hexb(8, 12)}` | `version` | {version} |",
            f"| 12 | `{hexb(12, 16)}` | `flags` | {flags} |",
            f"| 16 | `{hexb(16, 24)}` | `manifest_offset` | {m_off:#x} = {m_off} |",
            f"| 24 | `{hexb(24, 32)}` | `manifest_nbytes` | {m_len:#x} = {m_len} |",
            f"| 32 | `{hexb(32, 36)}` | `manifest_crc32` | {hexx(m_crc)} |",
            "| 36 | 24 × `00` | `reserved` | zero |",
            f"| 60 | `{hexb(60, 64)}` | `preamble_crc32` | {hexx(p_crc)} "
            "= CRC-32 of bytes `[0, 60)` |",
            "",
            f"Check: {m_off} + {m_len} = {m_off + m_len} = the file size (A9, A10).",
        ]
    )


def replace_after(text: str, marker: str, fenced: str | None, table: str | None) -> str:
    """Replace the first fenced block and/or the first table after ``marker`` (a table is a run
    of lines starting with ``|``, with the ``Check:`` line that may follow it)."""
    head, rest = text.split(marker, 1)
    if fenced is not None:
        fence = re.compile(r"```(\w*)\n.*?```", flags=re.S)
        rest = fence.sub(lambda m: f"```{m.group(1)}\n{fenced}\n```", rest, count=1)
    if table is not None:
        lines = rest.split("\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        if end + 1 < len(lines) and lines[end] == "" and lines[end + 1].startswith("Check:"):
            end += 2
        lines[start:end] = table.split("\n")
        rest = "\n".join(lines)
    return head + marker + rest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only say whether SPEC.md is current")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp))
        data = path.read_bytes()
        with Container(path) as c:
            body = data[c.preamble.manifest_offset :]
        doc = json.loads(body)
        head = data[: spec.PREAMBLE_NBYTES]
        fmap = file_map(path)
    text = SPEC.read_text(encoding="utf-8")
    new = replace_after(text, "<!-- example-manifest -->", manifest_block(doc), None)
    new = replace_after(new, "<!-- example-filemap -->", None, fmap)
    new = replace_after(
        new, "<!-- example-preamble -->", preamble_block(head), preamble_table(head)
    )
    crc = f"{int.from_bytes(head[32:36], 'little'):#010X}".replace("0X", "0x")
    stated = f"as {len(body)} bytes with\nCRC-32 `{crc}`"
    new = re.sub(r"as \d+ bytes with\nCRC-32 `0x[0-9A-F]+`", stated, new)
    if args.check:
        print("SPEC.md example is current" if new == text else "SPEC.md example is stale")
        return 0 if new == text else 1
    SPEC.write_text(new, encoding="utf-8")
    print(f"rewrote the example in {SPEC}: {len(doc['chunks'])} chunks, manifest {len(body)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
