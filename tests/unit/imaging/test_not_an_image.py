"""A file that is no image is refused in words a person reads, never as a Python bytes repr."""

from __future__ import annotations

import pytest

from keeneye.domain import InvalidInput
from keeneye.imaging import sniff_format


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello\n", "not a JPEG, PNG or TIFF image (it looks like a text file)"),
        (
            b"<!doctype html>\r\n<html>\tsp\xc3\xa4t",
            "not a JPEG, PNG or TIFF image (it looks like a text file)",
        ),
        (
            b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09",
            "not a JPEG, PNG or TIFF image (first bytes 00 01 02 03 04 05 06 07)",
        ),
        (
            b"GIF89a\x01\x00\x01\x00\x80",
            "not a JPEG, PNG or TIFF image (first bytes 47 49 46 38 39 61 01 00)",
        ),
    ],
)
def test_unsupported_bytes_are_described_as_text_or_hex(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        sniff_format(data)
    assert err.value.reason == "unsupported_format"
    assert str(err.value) == message
    assert "b'" not in err.value.one_line()
