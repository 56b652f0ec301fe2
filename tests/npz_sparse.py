"""Write an ``.npz`` whose arrays are holes of a sparse file: any shape, no disk used.

The layout is what ``numpy.savez`` writes (stored ZIP64 members, one ``.npy`` each), so
``numpy.load`` and :func:`geowall.sources.gemma_scope.npz_members` read it; the arrays read
as zeros. The CRC-32 of each member is computed without reading its zeros
(:func:`crc32_zeros`, zlib's GF(2) operator trick), so the file is a valid archive.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` in O(log n) (as zlib's ``crc32_combine``)."""
    odd = [0xEDB88320] + [1 << (i - 1) for i in range(1, 32)]  # one zero bit
    even = _gf2_square(odd)  # two
    odd = _gf2_square(even)  # four
    reg = crc ^ 0xFFFFFFFF
    while n:
        even = _gf2_square(odd)
        if n & 1:
            reg = _gf2_times(even, reg)
        n >>= 1
        if not n:
            break
        odd = _gf2_square(even)
        if n & 1:
            reg = _gf2_times(odd, reg)
        n >>= 1
    return reg ^ 0xFFFFFFFF


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    npformat.write_array_header_2_0(
        buf, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def write_sparse_npz(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> int:
    """``arrays``: key -> (shape, dtype). Returns the file's apparent size in bytes."""
    central = []
    with open(path, "wb") as fh:
        for key, (shape, dtype) in arrays.items():
            dtype = np.dtype(dtype)
            name = f"{key}.npy".encode()
            head = _npy_header(shape, dtype)
            size = len(head) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            offset = fh.tell()
            crc = crc32_zeros(zlib.crc32(head), size - len(head))
            extra = struct.pack("<HHQQ", 0x0001, 16, size, size)
            fh.write(
                struct.pack(
                    "<4sHHHHHIIIHH",
                    b"PK\x03\x04",
                    45,
                    0,
                    0,
                    0,
                    0x21,
                    crc,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(name),
                    len(extra),
                )
                + name
                + extra
                + head
            )
            fh.seek(size - len(head), 1)  # the array's bytes: a hole
            central.append((name, size, offset, crc))
        cd_start = fh.tell()
        for name, size, offset, crc in central:
            extra = struct.pack("<HHQQQ", 0x0001, 24, size, size, offset)
            fh.write(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    45,
                    45,
                    0,
                    0,
                    0,
                    0x21,
                    crc,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    0xFFFFFFFF,
                )
                + name
                + extra
            )
        cd_end = fh.tell()
        n = len(central)
        fh.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_end - cd_start, cd_start))
        fh.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_end, 1))
        fh.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        return fh.tell()
