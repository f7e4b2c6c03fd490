"""A local cache of verified chunks from remote containers (``--cache DIR``).

One file per chunk, named by a hash of everything that identifies its bytes: the source URL, the
object's version (ETag), and the chunk's index, offset, stored size and CRC-32. A replaced object
has a new version, so its chunks get new names and old ones are never served; they age out.

- **Atomic writes**: a chunk is written to a temporary file in the cache directory and renamed
  into place, so a reader (in this process or another) sees a whole file or none. No fsync: a
  file torn by a crash fails its CRC on the next read and is fetched again, which is all a cache
  owes.
- **Verified reads**: every hit is checked against the CRC in its key; a corrupted or truncated
  file is deleted and reported as a miss.
- **Bounded size**: after each insert, if the directory holds more than ``max_bytes``, the least
  recently used files (mtime, refreshed on every hit) are deleted. Eviction runs under an
  exclusive ``flock`` on ``DIR/.lock`` so several processes sharing a cache do not evict each
  other's work twice; reads take no lock (a file deleted under an open reader stays readable).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from wstream import errors as E
from wstream.format.crc import crc32

SUFFIX = ".chunk"


class ChunkKey(NamedTuple):
    url: str
    version: str  # the source's version (ETag / VersionId) when the chunk was read
    chunk: int  # the chunk's index in the manifest
    offset: int
    nbytes: int
    crc: int  # CRC-32 of the stored bytes, from the manifest

    def filename(self) -> str:
        ident = "\0".join(str(part) for part in self)
        return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest() + SUFFIX


class CacheStats(NamedTuple):
    hits: int
    misses: int
    corrupt: int
    evicted: int


class ChunkCache:
    """``get_into(key, out)`` on a hit fills ``out``; ``put(key, data)`` after a verified read."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes < 0:
            raise E.InputError(f"cache max_bytes: {max_bytes} must be >= 0")
        self.root = Path(root)
        self.max_bytes = max_bytes
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise E.InputError(f"cache dir {self.root}: cannot create ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise E.InputError(f"cache dir {self.root}: not writable")
        self._hits = self._misses = self._corrupt = self._evicted = 0

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._corrupt, self._evicted)

    def path(self, key: ChunkKey) -> Path:
        return self.root / key.filename()

    def get_into(self, key: ChunkKey, out: memoryview) -> bool:
        """Fill ``out`` (``key.nbytes`` long) from the cache; False on a miss or a bad file."""
        view = memoryview(out).cast("B")
        if len(view) != key.nbytes:
            raise E.InputError(
                f"cache get: buffer of {len(view)} bytes for a {key.nbytes}-byte chunk"
            )
        path = self.path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                got = 0
                while got < key.nbytes:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                extra = f.read(1)
        except FileNotFoundError:
            self._misses += 1
            return False
        except OSError:
            self._misses += 1
            return False
        if got != key.nbytes or extra or crc32(view) != key.crc:
            self._corrupt += 1
            self._misses += 1
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        self._hits += 1
        return True

    def put(self, key: ChunkKey, data: bytes | bytearray | memoryview) -> None:
        """Store a chunk's verified bytes (checked again here: a cache never holds bad bytes)."""
        view = memoryview(data).cast("B")
        if len(view) != key.nbytes or crc32(view) != key.crc:
            raise E.ChunkChecksumMismatch(
                f"cache put {key.url} chunk {key.chunk}: {len(view)} bytes with CRC "
                f"{crc32(view):#010x}, key says {key.nbytes} bytes with CRC {key.crc:#010x}"
            )
        if key.nbytes > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything for
        try:
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.root)
        except OSError:
            return  # a full or read-only disk makes the cache a no-op, not an error
        try:
            with open(fd, "wb", buffering=0) as f:
                pos = 0
                while pos < len(view):
                    pos += f.write(view[pos:]) or 0
            os.replace(tmp, self.path(key))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self.evict()

    def evict(self) -> int:
        """Delete least recently used chunk files until the total is within ``max_bytes``."""
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = []
            total = 0
            with os.scandir(self.root) as it:
                for entry in it:
                    if not entry.name.endswith(SUFFIX):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        entries.append((st.st_mtime_ns, st.st_size, entry.path))
                        total += st.st_size
            removed = 0
            entries.sort()
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
                total -= size
            self._evicted += removed
            return removed
