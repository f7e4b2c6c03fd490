"""CRC-32 (the zlib / ISO-HDLC polynomial, check value 0xCBF43926), as fast as the machine allows.

ISA-L's implementation (``isal``) gives the same values as ``zlib.crc32`` at 3-6x the speed
(12-23 GB/s against 3.5 here) and releases the GIL, which matters because every chunk's stored
bytes are checked as they are read; ``zlib`` is the fallback where no ``isal`` wheel exists.

``crc32_combine(a, b, n)`` is the CRC of ``A + B`` from ``a = crc32(A)``, ``b = crc32(B)`` and
``n = len(B)``: a chunk fetched as parallel sub-ranges is checked part by part as each part
arrives (while its bytes are in cache), and the parts' CRCs are combined in order.
"""

from __future__ import annotations

_POLY = 0xEDB88320  # the polynomial, bit-reflected (bit 31 is x^0)


def _mul(a: int, b: int) -> int:
    """a * b modulo the polynomial, both bit-reflected."""
    product = 0
    for bit in range(31, -1, -1):
        if a & (1 << bit):
            product ^= b
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def crc32_combine_py(crc1: int, crc2: int, len2: int) -> int:
    """:func:`crc32_combine` in Python (about 0.1 ms): appending ``len2`` bytes multiplies
    ``crc1``'s polynomial by x^(8 len2), got by square-and-multiply from x^1."""
    power, shift, n = 1 << 31, 1 << 30, 8 * len2  # x^0 and x^1, reflected
    while n:
        if n & 1:
            power = _mul(power, shift)
        shift = _mul(shift, shift)
        n >>= 1
    return _mul(power, crc1) ^ crc2


try:
    from isal.isal_zlib import crc32, crc32_combine
except ImportError:  # pragma: no cover - isal is a dependency; this keeps exotic platforms working
    from zlib import crc32

    crc32_combine = crc32_combine_py

__all__ = ["crc32", "crc32_combine", "crc32_combine_py"]
