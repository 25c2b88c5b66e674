"""One line of the manifest: what an input's result was made with, and where it stands.

An input's lines follow its life: ``upscaled`` as soon as the service answers (the
result URLs, written before anything is downloaded, so a result that was paid for is
never bought again), then ``ok`` (saved) or ``failed``. Every line carries the run's
settings (:func:`settings_of`), so that ``--resume`` can tell work made with other
settings. Paths are written as text; a path whose bytes are not UTF-8 (a file named
by another system) is written readably, with U+FFFD, and losslessly beside it, as the
base64 of its bytes (``source_bytes``, ``outputs_bytes``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs

from ideogram_async import UpscaleRequest, V2Options

from ._inputs import Source

__all__ = ["Outcome", "Record", "Settings", "parse_lines", "settings_of", "text", "utc_now"]

Settings = dict[str, Any]
"""What a result is made with, as recorded: JSON values, strings valid Unicode."""

Status = Literal["ok", "upscaled", "failed"]

_START = '{"source": '
"""How every line starts (``json.dumps`` with ``source`` first): where a record begins."""


def text(value: str) -> str:
    """``value`` as valid Unicode: the bytes of a file name that are not UTF-8 become U+FFFD."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that no file name made
        return value.encode("utf-8", "replace").decode("utf-8")


def _raw(path: str) -> str | None:
    """The base64 of ``path``'s bytes when its text loses some (they are not UTF-8), else None."""
    data = os.fsencode(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
    return None


def _unraw(value: object) -> str | None:
    """The path whose bytes ``value`` holds in base64 (as ``os.fsdecode`` gives it), or None."""
    if not isinstance(value, str):
        return None
    try:
        return os.fsdecode(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None


def utc_now() -> str:
    """The time now, as recorded: ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def settings_of(request: UpscaleRequest | V2Options, *, official: bool) -> Settings:
    """What results made with ``request`` are made with: the upscaler and every option set.

    v1 records its flavor (``proxy`` or ``official``), v2 its model. The documented
    service defaults (one image, factor ``x2``) are filled in, so that leaving one unset
    and naming it record the same settings.
    """
    fields: Settings
    if isinstance(request, V2Options):
        fields = {"api": "v2", "model": request.model, **request.form_fields()}
        if request.factor is not None:
            fields["upscale_factor"] = request.factor
    else:
        fields = {"api": "v1", "flavor": "official" if official else "proxy"}
        fields.update(json.loads(request.to_json()))
        fields.setdefault("num_images", 1)
    return {
        name: text(value) if isinstance(value, str) else value for name, value in fields.items()
    }


@attrs.frozen(kw_only=True)
class Outcome:
    """Where one input stands: upscaled (paid, results not saved yet), done, or failed.

    ``ok``: done, its results saved as ``outputs``. Not ``ok`` with an ``error``: failed
    (``urls`` are kept when the upscale was paid for and only saving its results
    failed). Not ``ok`` without an ``error``: upscaled, its results waiting at ``urls``.
    """

    source: Source
    ok: bool
    urls: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    """The files written, as paths under the ``--out`` folder as the user named it."""
    resolutions: tuple[str | None, ...] = ()
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    upscaled_at: str | None = None
    """When the service answered with ``urls`` (see :func:`utc_now`); they live 24 hours."""

    @property
    def status(self) -> Status:
        """``ok``, ``upscaled`` (paid, not saved yet) or ``failed``, as the manifest says."""
        if self.ok:
            return "ok"
        return "failed" if self.error is not None else "upscaled"

    def line(self, settings: Settings) -> bytes:
        """One JSON line for the manifest (absolute paths; never the API key)."""
        source = os.fspath(self.source.path)
        outputs = [os.fspath(path.absolute()) for path in self.outputs]
        record: dict[str, Any] = {"source": text(source)}
        if (raw := _raw(source)) is not None:
            record["source_bytes"] = raw
        record |= {
            "status": self.status,
            "settings": settings,
            "urls": [text(url) for url in self.urls],
            "upscaled_at": self.upscaled_at,
            "outputs": [text(output) for output in outputs],
        }
        raws = [_raw(output) for output in outputs]
        if any(raws):
            record["outputs_bytes"] = [
                raw or base64.b64encode(os.fsencode(output)).decode("ascii")
                for raw, output in zip(raws, outputs, strict=True)
            ]
        record |= {
            "error": None if self.error is None else text(self.error),
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
        }
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


@attrs.frozen(kw_only=True)
class Record:
    """One manifest line as read back; paths as ``os.fsdecode`` gives them (lossless)."""

    source: str
    status: str
    settings: Settings | None
    """``None`` on a line of an older manifest, which recorded no settings."""
    urls: tuple[str, ...]
    outputs: tuple[str, ...]
    attempts: int
    upscaled_at: str | None
    line: str
    """The line as read, ending in a newline."""


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _record(data: dict[str, Any], line: str) -> Record | None:
    source = _unraw(data.get("source_bytes")) or data.get("source")
    if not isinstance(source, str):
        return None
    outputs = _strings(data.get("outputs"))
    raws = data.get("outputs_bytes")
    if isinstance(raws, list) and len(raws) == len(outputs):
        outputs = tuple(_unraw(raw) or output for raw, output in zip(raws, outputs, strict=True))
    settings, attempts, when = data.get("settings"), data.get("attempts"), data.get("upscaled_at")
    return Record(
        source=source,
        status=str(data.get("status")),
        settings=settings if isinstance(settings, dict) else None,
        urls=_strings(data.get("urls")),
        outputs=outputs,
        attempts=attempts if isinstance(attempts, int) else 0,
        upscaled_at=when if isinstance(when, str) else None,
        line=line,
    )


def _parse(line: str) -> Record | None:
    """The record on ``line``; a record torn off by a killed run, and running into the
    next one on the same line, is skipped without losing that next one."""
    try:
        data = json.loads(line)
    except ValueError:
        start = line.find(_START, 1)  # where the next record starts, past the torn one
        return None if start == -1 else _parse(line[start:])
    return _record(data, line.strip() + "\n") if isinstance(data, dict) else None


def parse_lines(lines: Iterable[str]) -> Iterator[Record]:
    """The records of a manifest's lines, in order; lines that hold none are skipped."""
    for line in lines:
        record = _parse(line)
        if record is not None:
            yield record
