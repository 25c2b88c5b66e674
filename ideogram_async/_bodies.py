"""Reading an answer's body within a size cap, and quoting it without the key.

A hostile or broken server may send an endless, huge or gzip-bombed body, or echo
the key back in a form plain masking misses; and aiohttp's response errors carry the
request's headers. These are the defences.
"""

from __future__ import annotations

import json

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ._settings import Secret
from .errors import ResponseFormatError

__all__ = ["DEFAULT_MAX_RESPONSE_SIZE", "read_capped", "scrub", "without_headers"]

DEFAULT_MAX_RESPONSE_SIZE = 4 * 1024 * 1024
"""The largest API answer or error body read (4 MB, decoded): answers over it are
refused, error bodies cut."""
_READ_CHUNK = 64 * 1024


async def read_capped(response: aiohttp.ClientResponse, limit: int, *, cut: bool) -> str:
    """The decoded body, at most ``limit`` bytes of it.

    Read in chunks with a running total (aiohttp inflates gzip chunk by chunk), so a
    huge or endless body costs no more memory than the cap. Over the cap, the body
    is ``cut`` short or refused with ``ResponseFormatError``, before reading when
    its ``Content-Length`` already says so.
    """
    length = response.content_length
    if not cut and length is not None and length > limit:
        raise _too_large(response.status, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            if not cut:
                raise _too_large(response.status, limit)
            chunks.append(chunk[: len(chunk) - (total - limit)])
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        return data.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")


def _too_large(status: int, limit: int) -> ResponseFormatError:
    return ResponseFormatError(
        f"the service answered HTTP {status} with a body over max_response_size "
        f"({limit} bytes); check base_url points at the upscale service, or raise "
        f"max_response_size",
        body="",
        status=status,
    )


def scrub(key: Secret, text: str) -> str:
    """``text`` with the key masked, also where JSON escapes (``\\/``, ``\\u``) hide it.

    A JSON body that decodes to something holding the key comes back re-encoded,
    masked; any other text is returned with the key's plain form masked.
    """
    text = key.redact(text)
    if "\\" not in text:
        return text
    try:
        decoded = json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        return text
    return key.redact(decoded) if key.reveal() in decoded else text


def without_headers(exc: aiohttp.ClientError) -> aiohttp.ClientError:
    """``exc`` without the request headers (the key) aiohttp keeps in its response errors."""
    if isinstance(exc, aiohttp.ClientResponseError):
        exc.request_info = exc.request_info._replace(headers=CIMultiDictProxy(CIMultiDict()))
        exc.history = ()
        exc.headers = None
        exc.args = (exc.request_info, ())
    return exc
