"""The files of a checkpoint besides its weights that a container carries (SPEC.md section 13).

With them a ``.wst`` is the whole model, as a GGUF is: the tokenizer, the chat template (inside
``tokenizer_config.json``), the image processor's settings and the generation defaults travel in
the one file. :func:`find_model_files` picks them from the checkpoint's directory;
:func:`read_model_files` reads them for packing, checked before any tensor is packed (a size
within the format's limit, and strict JSON, as every tool that later reads them requires).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from wstream.errors import SourceError
from wstream.format.files import parse_json
from wstream.format.spec import MAX_FILE_NBYTES

# What the pipeline reads (tokenizer, template, image processor, stop ids), in this order. The
# checkpoint's config.json is not among them: it is the manifest's ``config``.
MODEL_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


class ModelFile(NamedTuple):
    name: str
    data: bytes


def find_model_files(src: str | os.PathLike[str]) -> tuple[Path, ...]:
    """The MODEL_FILES present in a checkpoint directory, or beside a single .safetensors file,
    in MODEL_FILES order. Symbolic links are followed (a Hugging Face cache snapshot is made of
    them); anything that is not a regular file is left out."""
    src = Path(src)
    directory = src if src.is_dir() else src.parent
    return tuple(directory / name for name in MODEL_FILES if (directory / name).is_file())


def read_model_files(paths: tuple[Path, ...]) -> tuple[ModelFile, ...]:
    """Each file's bytes; a file above MAX_FILE_NBYTES, unreadable, or (for a ``.json``) not
    strict JSON is a :class:`~wstream.errors.SourceError` naming it."""
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_NBYTES + 1)  # never more than the limit, whatever stat says
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
        if len(data) > MAX_FILE_NBYTES:
            raise SourceError(
                f"{path}: larger than {MAX_FILE_NBYTES} bytes, the limit for a file embedded in "
                "a container (pass --no-files to pack without the model files)"
            )
        if path.suffix == ".json":
            parse_json(data, str(path), SourceError)
        out.append(ModelFile(path.name, data))
    return tuple(out)
