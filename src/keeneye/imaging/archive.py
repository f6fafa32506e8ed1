"""Zips from clients, read defensively: every check on the central directory before a byte is inflated.

One helper for every zip keeneye accepts (smartcut's frame chunks, crop-health's multi-file
captures). :func:`open_safe_zip` refuses, with a precise :class:`~keeneye.domain.InvalidInput`,

* ``corrupt_zip`` (422): not a readable zip, an encrypted member, a member compressed with a method
  other than stored / deflate / bzip2 / LZMA, or one whose bytes do not inflate;
* ``zip_too_many_members`` (422): more members than :attr:`ZipLimits.max_members`;
* ``zip_unsafe_path`` (422): an absolute name, a ``..`` part, a drive letter or a backslash (zip-slip);
* ``zip_symlink`` (422): a member stored as a symbolic link;
* ``zip_too_large`` (413): a member, or all of them together, declaring more bytes than allowed;
* ``zip_bomb`` (413): a member whose declared size is over :attr:`ZipLimits.max_ratio` × its
  compressed size, or that inflates to more than its header declared (a lying header).

Nothing is extracted to disk: :meth:`SafeZip.read` inflates one member into memory, stopping as
soon as it passes the size its header declared. Directory entries are skipped.
"""

from __future__ import annotations

import io
import lzma
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from keeneye.domain import InvalidInput

MiB: Final = 1024 * 1024
# A member this small cannot be a bomb whatever its ratio (a few zeros compress 1000:1).
RATIO_FLOOR_BYTES: Final = 1 * MiB
_READ_CHUNK: Final = 1 * MiB
# What zipfile can inflate; anything else (AES, PPMd, a flipped method field) is refused up front.
_METHODS: Final = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
# What inflating damaged bytes raises: zipfile's own errors, and the codecs' (bzip2 raises OSError).
_READ_ERRORS: Final = (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class ZipLimits:
    """What one zip may hold; callers pass their own (a frame chunk is 50 JPEGs of ≤ 8 MiB)."""

    max_members: int = 64
    max_member_bytes: int = 512 * MiB
    max_total_bytes: int = 1024 * MiB
    max_ratio: float = 100.0  # declared size / compressed size, for members over RATIO_FLOOR_BYTES


@dataclass(frozen=True)
class SafeZip:
    """An opened zip whose central directory passed every check; ``members``: files only."""

    zf: zipfile.ZipFile
    members: tuple[zipfile.ZipInfo, ...]
    name: str

    def read(self, member: zipfile.ZipInfo) -> bytes:
        """One member's bytes, refusing (``zip_bomb``) as soon as it inflates past its declared size."""
        out = io.BytesIO()
        try:
            with self.zf.open(member) as f:
                while chunk := f.read(_READ_CHUNK):
                    out.write(chunk)
                    if out.tell() > member.file_size:
                        raise InvalidInput(
                            "zip_bomb",
                            f"{self.name}: {member.filename} inflates past the {member.file_size:,} "
                            "bytes its header declares",
                            status=413,
                            fix="send a zip written by an ordinary tool",
                        )
        except _READ_ERRORS as exc:
            raise InvalidInput(
                "corrupt_zip", f"{self.name}: {member.filename} cannot be read ({exc})",
                fix="zip the files again",
            ) from exc  # fmt: skip
        return out.getvalue()


def _unsafe(name: str) -> bool:
    if not name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return any(part == ".." for part in PurePosixPath(name).parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)  # 3: Unix


def check_members(
    infos: list[zipfile.ZipInfo],
    limits: ZipLimits,
    name: str,
    check_name: Callable[[zipfile.ZipInfo], None] | None = None,
) -> tuple[zipfile.ZipInfo, ...]:
    """The central directory's checks (see the module docstring); returns the file members.

    ``check_name`` (a caller's own naming rule, raising its own refusal) runs on every entry first."""
    if len(infos) > limits.max_members:
        raise InvalidInput(
            "zip_too_many_members",
            f"{name}: {len(infos)} entries, at most {limits.max_members} allowed",
            fix="send fewer files in one zip",
        )
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        if check_name is not None:
            check_name(info)
        if _unsafe(info.filename):
            raise InvalidInput(
                "zip_unsafe_path",
                f"{name}: entry {info.filename!r} would be written outside the folder it is unpacked in",
                fix="zip the files with relative names (no '..', no leading '/')",
            )
        if _is_symlink(info):
            raise InvalidInput(
                "zip_symlink", f"{name}: entry {info.filename!r} is a symbolic link",
                fix="zip the files themselves, not links to them",
            )  # fmt: skip
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise InvalidInput(
                "corrupt_zip", f"{name}: entry {info.filename!r} is encrypted", fix="zip without a password"
            )
        if info.compress_type not in _METHODS:
            raise InvalidInput(
                "corrupt_zip",
                f"{name}: entry {info.filename!r} uses compression method {info.compress_type}, "
                "which cannot be read here",
                fix="zip with the usual deflate compression (or none)",
            )
        if info.file_size > limits.max_member_bytes:
            raise InvalidInput(
                "zip_too_large",
                f"{name}: {info.filename} unpacks to {info.file_size:,} bytes, "
                f"over {limits.max_member_bytes:,}",
                status=413,
                fix="send smaller files",
            )
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise InvalidInput(
                "zip_bomb",
                f"{name}: {info.filename} declares {info.file_size:,} bytes from {info.compress_size:,} "
                f"compressed (over {limits.max_ratio:g}:1)",
                status=413,
                fix="send the files uncompressed or as written by the camera",
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise InvalidInput(
                "zip_too_large",
                f"{name}: its entries unpack to over {limits.max_total_bytes:,} bytes",
                status=413,
                fix="send fewer or smaller files",
            )
        files.append(info)
    return tuple(files)


@contextmanager
def open_safe_zip(
    source: bytes | Path,
    limits: ZipLimits | None = None,
    *,
    name: str | None = None,
    check_name: Callable[[zipfile.ZipInfo], None] | None = None,
) -> Iterator[SafeZip]:
    """Open ``source`` (bytes or a path) and check it (module docstring) before anything is read;
    ``limits`` None: the :class:`ZipLimits` defaults."""
    limits = limits or ZipLimits()
    label = name or (source.name if isinstance(source, Path) else "the zip")
    try:
        zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InvalidInput(
            "corrupt_zip", f"{label}: not a readable zip ({exc})", fix="send a zip of the files"
        ) from exc
    with zf:
        yield SafeZip(zf, check_members(zf.infolist(), limits, label, check_name), label)


def is_zip(data: bytes) -> bool:
    """Whether ``data`` starts like a zip (a local file header, or an empty archive)."""
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def member_filter(suffixes: tuple[str, ...]) -> Callable[[zipfile.ZipInfo], bool]:
    """Keep members whose name ends in one of ``suffixes`` (case-insensitive), skipping macOS
    resource forks (``__MACOSX/``, ``._name``) that zips made on a Mac carry."""

    def keep(info: zipfile.ZipInfo) -> bool:
        path = PurePosixPath(info.filename)
        if path.parts[0] == "__MACOSX" or path.name.startswith("._"):
            return False
        return path.name.lower().endswith(suffixes)

    return keep


def pack_files(files: list[tuple[str, bytes]]) -> bytes:
    """Several files as one stored (uncompressed) zip, sorted by name with a fixed timestamp, so the
    same files always make the same bytes (the same content hash, the same cached answer).

    Names are reduced to their last path part; two files of one name are refused (``bad_request``)."""
    names = [PurePosixPath(n.replace("\\", "/")).name for n, _ in files]
    if len(set(names)) != len(names) or not all(names):
        raise InvalidInput(
            "bad_request", "two files of the request have the same name (or none)", status=400,
            fix="give every file its own name, e.g. IMG_0001_1.tif … IMG_0001_5.tif",
        )  # fmt: skip
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, (_, data) in sorted(zip(names, files, strict=True)):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()
