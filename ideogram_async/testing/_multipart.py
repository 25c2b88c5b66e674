"""Reading and checking an upscale request's multipart body, as the service does.

:func:`read_body` streams the parts (hashing the file as it arrives);
:class:`FieldRules` says which ``image_request`` values a route accepts, and
:func:`check_upscale` answers 400/422 for whatever the service would refuse. A new
route with other fields needs only a new :class:`FieldRules`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from aiohttp.web_protocol import RequestPayloadError

from ideogram_async.images import SNIFF_BYTES, sniff

__all__ = [
    "UPSCALE_FIELDS",
    "Body",
    "FieldRules",
    "Reject",
    "check_upscale",
    "media_type",
    "part_names",
    "read_body",
]

_CHUNK_SIZE = 64 * 1024
_MAX_FIELD_SIZE = 1024 * 1024


class Reject(Exception):
    """Ends the handling of a request early with a JSON ``{"detail": ...}`` answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def response(self) -> web.Response:
        return web.json_response({"detail": self.detail}, status=self.status)


@attrs.define
class Parts:
    """What every multipart body the emulator reads keeps: the part names and the file."""

    part_names: list[str] = attrs.field(factory=list)
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""
    data: bytes | None = None

    def keep_file(self, filename: str, part: BodyPartReader, file: FilePart) -> None:
        """Record the file ``part`` named ``filename``, as :func:`read_file_part` read it."""
        self.filename, self.content_type = filename, part.headers.get(hdrs.CONTENT_TYPE)
        self.size, self.head, self.sha256, self.data = file.size, file.head, file.sha256, file.data


@attrs.define
class Body(Parts):
    """The parts of one v1 multipart body, as streamed in."""

    image_request: str | None = None
    field_content_type: str | None = None
    has_file: bool = False


@attrs.frozen
class FieldRules:
    """The ``image_request`` values a route accepts; absent ones take the default.

    ``ints`` maps a name to its (lowest, highest) value, ``choices`` to its allowed
    strings (the first is the default), ``strings`` lists the free-text ones.
    """

    ints: Mapping[str, tuple[int, int]]
    choices: Mapping[str, tuple[str, ...]]
    strings: frozenset[str]

    def problems(self, fields: Mapping[str, Any]) -> list[str]:
        """One message per bad value."""
        found = []
        for name, (low, high) in self.ints.items():
            value = fields.get(name, low)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                found.append(f"{name} must be an integer from {low} to {high}, got {_show(value)}")
        for name, allowed in self.choices.items():
            if name in fields and fields[name] not in allowed:
                found.append(
                    f"{name} must be one of {', '.join(allowed)}, got {_show(fields[name])}"
                )
        for name in sorted(self.strings):
            if name in fields and not isinstance(fields[name], str):
                found.append(f"{name} must be a string, got {_show(fields[name])}")
        return found


UPSCALE_FIELDS = FieldRules(
    ints={
        "resemblance": (1, 100),
        "detail": (1, 100),
        "seed": (0, 2_147_483_647),
        "num_images": (1, 8),
    },
    choices={"magic_prompt_option": ("AUTO", "ON", "OFF")},
    strings=frozenset({"prompt"}),
)


def _show(value: object) -> str:
    """A short JSON rendering of a value for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_fields(raw: str) -> dict[str, Any] | None:
    """Parse ``image_request`` into a dict, or None if it is not a JSON object."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def check_upscale(body: Body, rules: FieldRules) -> dict[str, Any]:
    """The parsed ``image_request`` of a complete, valid body; else :class:`Reject`."""
    if body.image_request is None:
        raise Reject(400, "Missing the image_request form field (a JSON object string).")
    if not body.has_file:
        raise Reject(400, "Missing the image_file file part.")
    fields = parse_fields(body.image_request)
    if fields is None:
        raise Reject(400, "image_request must be a JSON object string.")
    problems = rules.problems(fields)
    if problems:
        raise Reject(422, "; ".join(problems) + ".")
    if body.size == 0:
        raise Reject(400, "image_file is empty.")
    if sniff(body.head) is None:
        raise Reject(
            400, "image_file is not a JPEG, PNG or WebP image (judged by its first bytes)."
        )
    return fields


def media_type(request: web.Request) -> str:
    """The request's media type, lower case, without its parameters.

    ``request.content_type`` runs the email parser, and caches by the whole header,
    which a multipart boundary makes new for every request: it was most of the
    emulator's CPU per upload.
    """
    return request.headers.get(hdrs.CONTENT_TYPE, "").partition(";")[0].strip().lower()


def part_names(part: BodyPartReader | MultipartReader) -> tuple[str | None, str | None]:
    """A part's ``name`` and ``filename``, from one parse of its Content-Disposition.

    ``(None, None)`` for a nested multipart, which is never a form field.
    """
    if not isinstance(part, BodyPartReader):
        return None, None
    _, params = parse_content_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
    return content_disposition_filename(params, "name"), content_disposition_filename(
        params, "filename"
    )


async def read_body(
    request: web.Request, *, max_file_size: int, keep: bool, received: Callable[[int], None]
) -> Body:
    """Stream the multipart body part by part, hashing the file as it arrives.

    ``keep`` keeps the file's bytes in ``Body.data``; ``received`` is told the size of
    each file chunk as it arrives. Unknown parts are skipped, like the service does.
    """
    if (media := media_type(request)) != "multipart/form-data":
        raise Reject(
            400,
            "Expected a multipart/form-data body with an image_request field "
            f"and an image_file file part, got {media or 'no Content-Type'!r}.",
        )
    body = Body()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            name, filename = part_names(part)
            body.part_names.append(name or "")
            if not isinstance(part, BodyPartReader) or name not in ("image_request", "image_file"):
                continue
            if name in body.part_names[:-1]:
                raise Reject(400, f"The {name} part was sent more than once.")
            if name == "image_request":
                if filename is not None:
                    raise Reject(400, "image_request must be a plain form field, not a file part.")
                body.field_content_type = part.headers.get(hdrs.CONTENT_TYPE)
                body.image_request = await _read_field(part, name)
            else:
                await _read_file(part, filename, body, max_file_size, keep, received)
    except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
        raise Reject(400, f"Malformed multipart body: {exc}") from exc
    return body


async def _read_field(part: BodyPartReader, name: str) -> str:
    """Read a text part, refusing more than ``_MAX_FIELD_SIZE`` bytes."""
    data = bytearray()
    while not part.at_eof():
        data += await part.read_chunk(_CHUNK_SIZE)
        if len(data) > _MAX_FIELD_SIZE:
            raise Reject(413, f"{name} is larger than {_MAX_FIELD_SIZE} bytes.")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (LookupError, UnicodeDecodeError) as exc:
        raise Reject(400, f"{name} is not valid text: {exc}") from exc


async def _read_file(
    part: BodyPartReader,
    filename: str | None,
    body: Body,
    max_file_size: int,
    keep: bool,
    received: Callable[[int], None],
) -> None:
    if filename is None:
        raise Reject(400, "image_file must be a file part with a filename.")
    body.has_file = True
    file = await read_file_part(
        part,
        max_size=max_file_size,
        too_large=f"image_file is larger than the limit of {max_file_size} bytes.",
        head_bytes=SNIFF_BYTES,
        keep=keep,
        received=received,
    )
    body.keep_file(filename, part, file)


@attrs.frozen
class FilePart:
    """What the emulator keeps of an uploaded file part."""

    size: int
    head: bytes
    sha256: str
    data: bytes | None


async def read_file_part(
    part: BodyPartReader,
    *,
    max_size: int,
    too_large: str,
    head_bytes: int,
    keep: bool,
    received: Callable[[int], None],
) -> FilePart:
    """Read a file part in chunks: its size, first ``head_bytes``, sha256 and (if ``keep``) bytes.

    Over ``max_size`` it is refused with a 413 saying ``too_large``; ``received`` is told
    the size of every chunk as it arrives.
    """
    size = 0
    head = b""
    digest = hashlib.sha256()
    kept: list[bytes] = []
    while not part.at_eof():
        chunk = await part.read_chunk(_CHUNK_SIZE)
        size += len(chunk)
        received(len(chunk))
        if size > max_size:
            raise Reject(413, too_large)
        digest.update(chunk)
        head += chunk[: head_bytes - len(head)]  # nothing once it is full
        if keep:
            kept.append(chunk)
    return FilePart(size, head, digest.hexdigest(), b"".join(kept) if keep else None)
