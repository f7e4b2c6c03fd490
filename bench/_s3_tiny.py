"""The small-chunk S3 benches' fixture: the tiny synthetic model on a fresh SeaweedFS.

``bench/s3_open.py`` and ``bench/s3_coalesce.py`` measure opens and small-chunk requests, so both
want the same object: the ``tiny`` preset packed with 96 KiB chunks (65 chunks, a 74 KiB first
one), uploaded to a server the tests' ``s3_server`` starts in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3_server import S3Server, running_server

from wstream import pack
from wstream.container.upload import S3Upload
from wstream.synthetic import write_checkpoint

URL = "s3://bench/m.wst"


@contextlib.contextmanager
def tiny_model_on_s3(prefix: str) -> Iterator[S3Server]:
    """A running server holding the tiny model at :data:`URL`, with ``os.environ`` pointing the
    AWS client at it; everything is removed on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        ck = write_checkpoint(root / "ck", "tiny", seed=1).directory
        pack(ck, root / "m.wst", max_chunk=96 << 10)
        with running_server(root / "weed") as server:
            os.environ.update(server.environ())
            server.admin_client().create_bucket(Bucket="bench")
            with S3Upload(URL) as up:
                up.write((root / "m.wst").read_bytes())
            yield server
