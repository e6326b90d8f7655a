"""A zip archive of stored (uncompressed) members, written one member at a time, laid out as ``torch.save`` lays
out a ``pytorch_model.bin``: every member's data starts on a 64-byte boundary (the local header's extra field is
padded with a ``"FB"`` field of ``Z`` bytes, as PyTorch's writer pads it), ZIP64 records are written only where a
size, an offset or the member count needs them, and no timestamps (1980-01-01), so equal input gives equal bytes.

Member sizes are known before their data is written (a tensor's byte count), so only the CRC-32 is not: it is
computed while the data is written (in a second thread for large members: ``zlib.crc32`` and ``write`` both release
the GIL) and patched into the local header afterwards. Readers take sizes and CRCs from the central directory.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import zlib

ZIP64_LIMIT = 0xFFFFFFFF    # sizes and offsets from here on are stored in ZIP64 fields (a module value: tests lower it)
ZIP64_COUNT = 0xFFFF        # the same for the number of members
ALIGNMENT = 64              # torch's kFieldAlignment: where each member's data starts
_OVERLAP_BYTES = 4 << 20    # members from this size on get their CRC computed beside the write
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip format's first day
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_PAD_FIELD = 0x4246  # "FB"


class StoredZipWriter:
    """Write members with :meth:`write`, then :meth:`close` to write the central directory. ``file`` is a binary
    file opened for writing at its start (an OSError from it propagates; the caller removes the partial file)."""

    def __init__(self, file):
        self._file = file
        self._offset = 0
        self._members: list[tuple[bytes, int, int, int]] = []  # (name, crc, size, header offset)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def write(self, name: str, data) -> None:
        view = memoryview(data).cast("B")
        size, offset, encoded = view.nbytes, self._offset, name.encode("utf-8")
        zip64 = size >= ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        pad = -(offset + _LOCAL.size + len(encoded) + len(extra)) % ALIGNMENT
        if pad:
            pad += ALIGNMENT if pad < 4 else 0  # room for the padding field's own 4-byte header
            extra += struct.pack("<HH", _PAD_FIELD, pad - 4) + b"Z" * (pad - 4)
        overlap = size >= _OVERLAP_BYTES
        crc = 0 if overlap else zlib.crc32(view)
        stored = 0xFFFFFFFF if zip64 else size
        header = _LOCAL.pack(0x04034B50, 45 if zip64 else 20, 0x800, 0, 0, _DOS_DATE, crc, stored, stored,
                             len(encoded), len(extra))
        self._file.write(header + encoded + extra)
        if overlap:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zip-crc32")
            pending = self._pool.submit(zlib.crc32, view)
            try:
                self._file.write(view)
            finally:
                crc = pending.result()  # also after a failed write: the thread must not outlive ``data``
            self._file.flush()
            os.pwrite(self._file.fileno(), struct.pack("<I", crc), offset + 14)
        else:
            self._file.write(view)
        self._members.append((encoded, crc, size, offset))
        self._offset = offset + len(header) + len(encoded) + len(extra) + size

    def close(self) -> None:
        """Write the central directory and the end records (the file itself is left open for the caller)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        start, entries = self._offset, []
        for encoded, crc, size, offset in self._members:
            fields = [value for value in (size, size, offset) if value >= ZIP64_LIMIT]
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            stored = 0xFFFFFFFF if size >= ZIP64_LIMIT else size
            version = 45 if fields else 20
            entries.append(_CENTRAL.pack(0x02014B50, version, version, 0x800, 0, 0, _DOS_DATE, crc, stored, stored,
                                         len(encoded), len(extra), 0, 0, 0, 0,
                                         0xFFFFFFFF if offset >= ZIP64_LIMIT else offset) + encoded + extra)
        directory = b"".join(entries)
        self._file.write(directory)
        count, length, end = len(self._members), len(directory), start + len(directory)
        if count >= ZIP64_COUNT or length >= ZIP64_LIMIT or start >= ZIP64_LIMIT:  # then the end record says "see ZIP64"
            self._file.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, length, start))
            self._file.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
            count, length, start = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
        self._file.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, length, start, 0))
        self._file.flush()
