"""CRC-32 and its combination: what lets a chunk fetched in parallel parts be checked per part."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from wstream.format.crc import crc32, crc32_combine, crc32_combine_py


def test_the_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926


@given(a=st.binary(max_size=300), b=st.binary(max_size=3000), seed=st.integers(0, 2**32 - 1))
def test_combined_parts_give_the_crc_of_the_whole(a: bytes, b: bytes, seed: int) -> None:
    whole = zlib.crc32(a + b)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == whole
    assert crc32_combine_py(zlib.crc32(a), zlib.crc32(b), len(b)) == whole
    # any value of the first part: combining is linear in it, not only right for real CRCs
    assert crc32_combine_py(seed, zlib.crc32(b), len(b)) == crc32_combine(
        seed, zlib.crc32(b), len(b)
    )


def test_long_parts_combine_too() -> None:
    # a length with high bits set, as a 32 MiB chunk's 8 MiB parts have
    for n in (8 << 20, (1 << 31) + 12345):
        assert crc32_combine_py(0x12345678, 0x9ABCDEF0, n) == crc32_combine(
            0x12345678, 0x9ABCDEF0, n
        )
