"""Compressed `/v2` answers: gzip or deflate when the request's Accept-Encoding asks for one.

tritonclient asks with `response_compression_algorithm` ("gzip" or "deflate"); many HTTP
clients (httpx, curl --compressed) ask by default. Triton compresses only when asked, and so
does this: a client that sends no Accept-Encoding gets the raw bytes. The
`Inference-Header-Content-Length` of a compressed answer is still its JSON's length before
compression, as Triton's clients read it (they inflate first, then split).
"""

from __future__ import annotations

import gzip
import zlib

ENCODINGS = ("gzip", "deflate")  # in order of preference when the client weighs them alike
# Under this, compression costs more than it saves: an error or a threshold alone.
MIN_BYTES = 1024
# The fastest level: masks (runs of 0 and 1) shrink about as well as at the default, and the
# CPU goes to the model; probabilities barely shrink at any level.
LEVEL = 1


def chosen_encoding(accept_encoding: str | None) -> str | None:
    """The encoding to answer with for an Accept-Encoding header: gzip, deflate or None."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, options = item.strip().partition(";")
        weight = 1.0
        for option in options.split(";"):
            key, _, value = option.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0  # a weight that cannot be read asks for nothing
        weights[name.strip().lower()] = weight
    wildcard = weights.get("*", 0.0)
    best = max(ENCODINGS, key=lambda name: (weights.get(name, wildcard), -ENCODINGS.index(name)))
    return best if weights.get(best, wildcard) > 0 else None


def compress(data: bytes, encoding: str) -> bytes:
    """`data` as a gzip member or, for deflate, a zlib stream (what HTTP's deflate means)."""
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=LEVEL, mtime=0)
    return zlib.compress(data, LEVEL)
