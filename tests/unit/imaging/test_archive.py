"""The shared zip checks: everything refused from the central directory before a byte is inflated."""

from __future__ import annotations

import io
import stat
import struct
import zipfile

import pytest

from keeneye.domain import InvalidInput
from keeneye.imaging.archive import ZipLimits, is_zip, member_filter, open_safe_zip, pack_files


def _zip(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def _refused(data: bytes, limits: ZipLimits | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as err, open_safe_zip(data, limits or ZipLimits(), name="capture.zip"):
        pass
    return err.value


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/cron.d/x.tif", "zip_unsafe_path"),
        ("bands/../../x.tif", "zip_unsafe_path"),
        ("/abs/x.tif", "zip_unsafe_path"),
        ("C:/x.tif", "zip_unsafe_path"),
        ("bands\\..\\x.tif", "zip_unsafe_path"),
    ],
)
def test_a_name_leaving_the_folder_is_refused(name: str, reason: str) -> None:
    err = _refused(_zip({"ok.tif": b"x", name: b"y"}))
    assert (err.reason, err.status) == (reason, 422)
    assert repr(name) in err.message and err.message.startswith("capture.zip: entry")


def test_a_symlink_member_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        link = zipfile.ZipInfo("IMG_0001_1.tif")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    err = _refused(out.getvalue())
    assert (err.reason, err.status) == ("zip_symlink", 422)
    assert "'IMG_0001_1.tif' is a symbolic link" in err.message


def test_too_many_members() -> None:
    err = _refused(_zip({f"b{i}.tif": b"x" for i in range(5)}), ZipLimits(max_members=4))
    assert (err.reason, err.status) == ("zip_too_many_members", 422)
    assert err.message == "capture.zip: 5 entries, at most 4 allowed"


def test_a_declared_size_over_the_limit_and_a_bomb_are_refused_from_the_directory() -> None:
    zeros = _zip({"IMG_0001_1.tif": b"\0" * (3 * 1024 * 1024)})  # 3 MiB of zeros: ~3 kB deflated
    assert len(zeros) < 10_000
    bomb = _refused(zeros)
    assert (bomb.reason, bomb.status) == ("zip_bomb", 413)
    assert "declares 3,145,728 bytes from" in bomb.message and "over 100:1" in bomb.message
    big = _refused(zeros, ZipLimits(max_member_bytes=1024 * 1024, max_ratio=1e9))
    assert (big.reason, big.status) == ("zip_too_large", 413)
    assert "unpacks to 3,145,728 bytes, over 1,048,576" in big.message
    total = _refused(
        _zip({"a.tif": b"\1" * 600, "b.tif": b"\2" * 600}, compression=zipfile.ZIP_STORED),
        ZipLimits(max_total_bytes=1000),
    )
    assert (total.reason, total.status) == ("zip_too_large", 413)


def test_a_member_lying_about_its_size_is_refused_when_read() -> None:
    """The central directory says 10 bytes; the member inflates to 1000: reading stops at the
    declared size (zipfile then fails the CRC), the rest never lands in memory."""
    data = bytearray(_zip({"IMG_0001_1.tif": b"\7" * 1000}))
    cd = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 10)  # central directory: uncompressed size
    lh = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, lh + 22, 10)  # local header: uncompressed size
    with open_safe_zip(bytes(data)) as zf, pytest.raises(InvalidInput) as err:
        zf.read(zf.members[0])
    assert err.value.reason == "corrupt_zip"
    assert (
        err.value.message == "the zip: IMG_0001_1.tif cannot be read (Bad CRC-32 for file 'IMG_0001_1.tif')"
    )


def test_not_a_zip_and_an_encrypted_member() -> None:
    err = _refused(b"PK\x03\x04 broken")
    assert (err.reason, err.status) == ("corrupt_zip", 422) and "not a readable zip" in err.message
    data = bytearray(_zip({"a.tif": b"x"}))
    cd = data.rindex(b"PK\x01\x02")
    struct.pack_into("<H", data, cd + 8, 1)  # general purpose flag: encrypted
    assert _refused(bytes(data)).message == "capture.zip: entry 'a.tif' is encrypted"


def test_directories_are_skipped_and_mac_forks_filtered() -> None:
    data = _zip(
        {"cap/": b"", "cap/IMG_1.tif": b"1", "__MACOSX/cap/._IMG_1.tif": b"fork", "cap/notes.txt": b"n"}
    )
    keep = member_filter((".tif", ".tiff"))
    with open_safe_zip(data) as zf:
        assert [m.filename for m in zf.members if keep(m)] == ["cap/IMG_1.tif"]
        assert zf.read(zf.members[0]) == b"1"
    assert is_zip(data) and not is_zip(b"II*\x00")


def test_pack_files_is_deterministic_and_refuses_duplicate_names() -> None:
    files = [("IMG_0001_2.tif", b"green"), ("C:\\captures\\IMG_0001_1.tif", b"blue")]
    packed = pack_files(files)
    assert packed == pack_files(list(reversed(files)))  # same files → same bytes → same hash
    with zipfile.ZipFile(io.BytesIO(packed)) as zf:
        assert zf.namelist() == ["IMG_0001_1.tif", "IMG_0001_2.tif"]
        assert zf.read("IMG_0001_1.tif") == b"blue"
    with pytest.raises(InvalidInput) as err:
        pack_files([("a/x.tif", b"1"), ("b/x.tif", b"2")])
    assert (err.value.reason, err.value.status) == ("bad_request", 400)
