"""Which encoding a `/v2` answer takes from the request's Accept-Encoding, and its framing."""

from __future__ import annotations

import gzip
import zlib

import pytest

from service.api.oip.compression import chosen_encoding, compress


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),  # tritonclient's response_compression_algorithm="deflate"
        ("gzip, deflate", "gzip"),  # httpx's default
        ("deflate, gzip", "gzip"),  # alike weights: gzip first
        ("gzip;q=0.5, deflate", "deflate"),
        ("GZIP;Q=0.8", "gzip"),
        ("gzip;q=0, deflate;q=0", None),
        ("br, zstd", None),
        ("*", "gzip"),
        ("*;q=0, deflate;q=0.1", "deflate"),
        ("gzip;q=nonsense", None),
    ],
)
def test_the_encoding_chosen(header: str | None, chosen: str | None) -> None:
    assert chosen_encoding(header) == chosen


def test_deflate_is_a_zlib_stream_and_gzip_a_gzip_member() -> None:
    data = bytes(range(256)) * 64
    assert zlib.decompress(compress(data, "deflate")) == data  # as tritonclient inflates it
    assert gzip.decompress(compress(data, "gzip")) == data
    assert compress(data, "gzip") == compress(data, "gzip")  # no timestamp: same bytes each time
