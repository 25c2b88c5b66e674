"""What the emulator saw: counters and the uploads it received, for tests to assert on."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Literal

import attrs

__all__ = ["MAX_RECORDS", "EmulatorStats", "ReceivedUpload", "ReceivedV2Upload", "Route"]

#: The uploads and image requests kept in :class:`EmulatorStats` (the most recent ones),
#: so a long benchmark run does not grow memory without bound.
MAX_RECORDS = 10_000

Route = Literal["proxy", "official"]


@attrs.frozen
class ReceivedUpload:
    """One multipart upload as the emulator received it (both parts present).

    Header names are lower-cased. ``fields`` is the parsed ``image_request`` JSON object
    (empty if it was not one); ``image_request_raw`` is the exact string received;
    ``field_content_type`` is the content type of the ``image_request`` part, if any.
    ``filename``, ``content_type``, ``size`` and ``sha256`` describe the ``image_file``
    part; ``part_names`` lists every part name in the order received.
    """

    route: Route
    headers: dict[str, str]
    fields: dict[str, Any]
    image_request_raw: str
    field_content_type: str | None
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    part_names: list[str]


@attrs.frozen
class ReceivedV2Upload:
    """One v2 upscale (or quote) as the emulator received it.

    ``model`` is the model in the URL, ``dry_run`` whether it asked for a quote;
    ``fields`` holds every plain form field as text, ``part_names`` every part name in
    the order received; ``filename`` .. ``sha256`` describe the ``image`` file part.
    """

    model: str
    dry_run: bool
    headers: dict[str, str]
    fields: dict[str, str]
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    part_names: list[str]


def _records() -> deque[Any]:
    return deque(maxlen=MAX_RECORDS)


@attrs.define
class EmulatorStats:
    """Counters of one emulator, updated as requests arrive.

    ``requests`` counts upscale requests of every outcome (401s included);
    ``responses_by_status`` counts the upscale responses actually sent (a dropped or
    truncated connection sends none); ``in_flight``/``peak_in_flight`` count upscale
    requests inside the handler now/at most; ``bytes_received`` sums the ``image_file``
    bytes read; ``uploads`` keeps the last :data:`MAX_RECORDS` uploads; ``image_requests``
    keeps the (lower-cased) headers of the last image GETs and ``image_downloads`` counts
    the images served; ``faults_injected`` counts injected faults by kind.

    Places (images in flight: a request holds ``num_images`` of them while the emulator
    works on it): ``places_in_use``/``peak_places_in_use`` now/at most,
    ``busy_place_seconds`` the sum of places x seconds held (divide by the allowance
    and the wall time for the allowance's use), ``rejected_over_allowance`` the
    requests refused with a 429 ``inflight_limit``.
    """

    requests: int = 0
    responses_by_status: Counter[int] = attrs.field(factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    bytes_received: int = 0
    uploads: deque[ReceivedUpload] = attrs.field(factory=_records, repr=False)
    last_upload: ReceivedUpload | None = None
    image_requests: deque[dict[str, str]] = attrs.field(factory=_records, repr=False)
    image_downloads: int = 0
    faults_injected: Counter[str] = attrs.field(factory=Counter)
    places_in_use: int = 0
    peak_places_in_use: int = 0
    busy_place_seconds: float = 0.0
    rejected_over_allowance: int = 0
    v2_uploads: deque[ReceivedV2Upload] = attrs.field(factory=_records, repr=False)
    """The last v2 upscale and quote requests with a file part."""
    quotes: int = 0
    """v2 price quotes answered (``dry_run``)."""
    billed_usd_micros: int = 0
    """What the v2 upscales that ran cost, withheld images included, failed ones not."""
    withheld: int = 0
    """v2 result images withheld by the (emulated) safety check."""
    polls: int = 0
    """Generation polls answered (any status but 429)."""
    polls_refused: int = 0
    """Generation polls refused with 429 as over the polling limit."""
