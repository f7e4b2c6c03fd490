"""Read Hugging Face checkpoints: one .safetensors file, or a directory of shards with an index.

Our own header reader (validated like safetensors' core: header cap, offsets inside the buffer,
no overlap, no holes, sizes that match dtype and shape) keeps every dtype as raw bytes, bf16
included, so packing is byte-preserving. Tensor bytes are read with ``pread`` straight into the
caller's buffer: packing never maps or holds the whole checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wstream.container.scoped import Scoped
from wstream.errors import SourceError
from wstream.format import strictjson
from wstream.format.spec import MAX_NAME_BYTES, MAX_NDIM, DType

MAX_SAFETENSORS_HEADER = 100 * 1000 * 1000  # safetensors' own limit
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True, slots=True)
class SourceTensor:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in ``path``
    nbytes: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tensors: Mapping[str, SourceTensor]  # in shard order, then file order within a shard
    config: Mapping[str, Any] | None  # config.json beside the weights, if any
    metadata: Mapping[str, str]  # safetensors __metadata__ (merged over shards)
    files: tuple[Path, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _check_text(value: Any, where: str) -> None:
    """Every string in ``value`` must be encodable as UTF-8 (JSON allows lone surrogates)."""
    if strictjson.first_non_text(value) is not None:
        raise SourceError(f"{where}: contains a lone surrogate (not valid Unicode text)")


def _check_name(name: str, where: str) -> None:
    """A tensor name the container can hold: valid Unicode of 1..MAX_NAME_BYTES UTF-8 bytes."""
    _check_text(name, where)
    size = len(name.encode("utf-8"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise SourceError(f"{where}: name of {size} bytes is outside [1, {MAX_NAME_BYTES}]")


# json hooks: a name given twice is an error, not "the last one wins"; NaN and Infinity are
# refused because the manifest that carries config.json is strict JSON (SPEC.md), so before any
# tensor is packed.
_unique_keys = strictjson.unique_keys(lambda k: SourceError(f"duplicate name {k!r}"))
_no_constant = strictjson.no_constants(
    lambda name: SourceError(f"{name} is not valid JSON (the container's manifest is strict JSON)")
)


def read_safetensors_header(path: Path) -> tuple[list[SourceTensor], dict[str, str]]:
    """Parse and validate one safetensors file's header; returns tensors in file order."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SourceError(f"{path}: {size} bytes is too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > MAX_SAFETENSORS_HEADER or n > size - 8:
                raise SourceError(
                    f"{path}: header length {n} exceeds the limit "
                    f"({min(MAX_SAFETENSORS_HEADER, size - 8)} bytes)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except SourceError as exc:
        raise SourceError(f"{path}: header: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SourceError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path}: header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SourceError(f"{path}: __metadata__ must map strings to strings")
    _check_text(metadata, f"{path}: __metadata__")
    data_start = 8 + n
    data_size = size - data_start
    tensors: list[SourceTensor] = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        _check_name(name, where)
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SourceError(f"{where}: expected fields dtype, shape, data_offsets")
        try:
            dtype = DType(info["dtype"])
        except ValueError:
            raise SourceError(f"{where}: dtype {info['dtype']!r} is not supported") from None
        shape, offs = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise SourceError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if len(shape) > MAX_NDIM:
            raise SourceError(f"{where}: shape has {len(shape)} dimensions; at most {MAX_NDIM}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
            raise SourceError(f"{where}: data_offsets {offs!r} is not [begin, end]")
        begin, end = offs
        nbytes = math.prod(shape) * dtype.itemsize
        if not 0 <= begin <= end <= data_size:
            raise SourceError(f"{where}: data_offsets {offs} outside the {data_size}-byte buffer")
        if end - begin != nbytes:
            raise SourceError(
                f"{where}: data_offsets span {end - begin} bytes, but {dtype}{shape} needs {nbytes}"
            )
        tensors.append(SourceTensor(name, dtype, tuple(shape), path, data_start + begin, nbytes))
    tensors.sort(key=lambda t: (t.offset, t.nbytes))
    cursor = data_start
    for t in tensors:
        if t.offset != cursor:
            kind = "overlaps the previous tensor" if t.offset < cursor else "leaves a hole"
            raise SourceError(f"{path}: tensor {t.name!r} at {t.offset - data_start} {kind}")
        cursor = t.offset + t.nbytes
    if cursor != size:
        raise SourceError(
            f"{path}: tensors end at byte {cursor} but the file has {size} bytes "
            "(truncated or padded shard)"
        )
    return tensors, metadata


def _read_json(path: Path, *, unique: bool = False) -> Any:
    """``unique``: a member name given twice is an error (the index's weight map); config.json
    is read as transformers reads it, the last of duplicates winning."""
    try:
        return json.loads(
            path.read_text(encoding="utf-8"),
            object_pairs_hook=_unique_keys if unique else None,
            parse_constant=_no_constant,
        )
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(f"{path}: cannot read JSON ({exc})") from None


def open_checkpoint(src: str | os.PathLike[str]) -> Checkpoint:
    """A safetensors file, or a directory with model.safetensors.index.json (or one shard)."""
    src = Path(src)
    if src.is_dir():
        directory = src
        index_path = src / INDEX_NAME
        if index_path.exists():
            index = _read_json(index_path, unique=True)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise SourceError(f"{index_path}: 'weight_map' must map tensor names to file names")
            files = list(dict.fromkeys(weight_map.values()))
        else:
            weight_map = None
            files = sorted(p.name for p in src.glob("*.safetensors"))
            if not files:
                raise SourceError(f"{src}: no *.safetensors file and no {INDEX_NAME}")
        paths = []
        for name in files:
            p = directory / name
            if Path(name).name != name:
                raise SourceError(f"{index_path}: shard name {name!r} must be a plain file name")
            if not p.is_file():
                raise SourceError(f"{src}: shard {name!r} is missing")
            paths.append(p)
    elif src.is_file():
        directory, weight_map, paths = src.parent, None, [src]
    else:
        raise SourceError(f"{src}: no such file or directory")

    tensors: dict[str, SourceTensor] = {}
    metadata: dict[str, str] = {}
    for p in paths:
        shard, meta = read_safetensors_header(p)
        metadata.update(meta)
        for t in shard:
            if t.name in tensors:
                raise SourceError(
                    f"tensor {t.name!r} is in both {tensors[t.name].path.name} and {p.name}"
                )
            tensors[t.name] = t
    if weight_map is not None:
        for name, file in weight_map.items():
            found = tensors.get(name)
            if found is None:
                raise SourceError(f"{INDEX_NAME}: tensor {name!r} is listed in {file!r} but absent")
            if found.path.name != file:
                raise SourceError(
                    f"{INDEX_NAME}: tensor {name!r} is listed in {file!r} "
                    f"but found in {found.path.name!r}"
                )
        extra = sorted(set(tensors) - set(weight_map))
        if extra:
            raise SourceError(
                f"{INDEX_NAME}: {len(extra)} tensor(s) in the shards are not listed, "
                f"e.g. {extra[0]!r}"
            )
    config_path = directory / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    if config is not None and not isinstance(config, dict):
        raise SourceError(f"{config_path}: expected a JSON object")
    if config is not None:
        _check_text(config, str(config_path))
    return Checkpoint(tensors, config, metadata, tuple(paths))


class CheckpointReader(Scoped):
    """Reads tensor bytes (or a byte range of them) into caller buffers, one fd per shard."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._fds: dict[Path, int] = {}

    def read_into(self, t: SourceTensor, start: int, out: memoryview) -> None:
        """Fill ``out`` with bytes [start, start + len(out)) of tensor ``t``."""
        fd = self._fds.get(t.path)
        if fd is None:
            fd = self._fds[t.path] = os.open(t.path, os.O_RDONLY)
        offset = t.offset + start
        view = out
        while view.nbytes:
            n = os.preadv(fd, [view], offset)
            if n == 0:
                raise SourceError(f"{t.path}: ended while reading tensor {t.name!r} (truncated?)")
            view, offset = view[n:], offset + n

    def _on_exit(self) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
