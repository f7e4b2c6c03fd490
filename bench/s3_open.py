"""Open latency of a small container over S3 (SeaweedFS): open_container(url), and open to the first (74 KiB) chunk in hand; 20 tries, medians.

python bench/s3_open.py
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "tests")
from s3_server import running_server

from wstream import open_container, pack
from wstream.container.upload import S3Upload
from wstream.synthetic import write_checkpoint

with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    ck = write_checkpoint(root / "ck", "tiny", seed=1).directory
    pack(ck, root / "m.wst", max_chunk=96 << 10)
    with running_server(root / "weed") as server:
        os.environ.update(server.environ())
        server.admin_client().create_bucket(Bucket="bench")
        with S3Upload("s3://bench/m.wst") as up:
            up.write((root / "m.wst").read_bytes())
        url = "s3://bench/m.wst"
        opens, firsts = [], []
        with open_container(url) as c:
            n = len(c.manifest.chunks)
            first = c.manifest.chunks[0].nbytes
        for _ in range(20):
            t0 = time.perf_counter()
            with open_container(url) as c:
                t1 = time.perf_counter()
                s = c.stream(prefetch=2, budget=64 << 20)
                ch = next(s)
                t2 = time.perf_counter()
                ch.release()
                s.close()
            opens.append(t1 - t0)
            firsts.append(t2 - t0)
        print(
            f"{n} chunks, first chunk {first} bytes: open median {statistics.median(opens) * 1e3:.1f} ms, open to first chunk median {statistics.median(firsts) * 1e3:.1f} ms"
        )
