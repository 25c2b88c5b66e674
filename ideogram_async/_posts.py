"""The one attempt path of every upscale: a multipart POST that holds its places.

Mixed into ``IdeogramClient``: v1 and v2 upscales and v2 quotes all go through
:meth:`ImagePosts._post_image`, which holds the request's places in flight only while
it is on the wire, and turns a 429 ``inflight_limit`` into a wait for a place rather
than a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import aiohttp
from aiolimiter import AsyncLimiter

from ._http import Http
from .errors import RateLimitError
from .limits import Allowance
from .uploads import PreparedImage

__all__ = ["ImagePosts"]

logger = logging.getLogger("ideogram_async")


class _Client(Protocol):
    """What the attempt path uses of ``IdeogramClient``."""

    allowance: Allowance
    base_url: str
    _http: Http
    _limiter: AsyncLimiter | None

    async def _rejected(self, error: RateLimitError, image: PreparedImage, places: int) -> None: ...

    async def _send(
        self, url: str, fields: Mapping[str, str], image: PreparedImage, part: str
    ) -> tuple[str, int]: ...


class ImagePosts:
    """The attempt path of ``IdeogramClient`` (mixed in)."""

    async def _post_image(
        self: _Client,
        url: str,
        fields: Mapping[str, str],
        image: PreparedImage,
        *,
        part: str,
        places: int = 1,
    ) -> tuple[str, int]:
        """One attempt of a multipart POST of an image; the 2xx body and status.

        The one attempt path of every upscale (v1 and v2, quotes included): it holds
        ``places`` only while on the wire, and any non-2xx raises its error. A 429
        ``inflight_limit`` is not a failure of the attempt: the service ran nothing, so
        the request reports it to the allowance (which gives its places back, waking
        nobody) and asks for places again: the allowance decides when it goes (a place
        of its own freed, or a backoff when others hold the organization's places),
        without using up a retry (the deadline still holds).
        """
        while True:
            async with self.allowance.hold(places):
                try:
                    answer = await self._send(url, fields, image, part)
                except RateLimitError as error:
                    await self._rejected(error, image, places)
                else:
                    await self.allowance.completed()
                    return answer

    async def _rejected(
        self: _Client, error: RateLimitError, image: PreparedImage, places: int
    ) -> None:
        """Report a 429 to the allowance; raise it unless it asks to wait for a place.

        A 429 without ``reject_reason: inflight_limit`` (a gateway's, or a body a
        proxy dropped) may or may not be the allowance: the bound adapts down, and
        the error takes the usual retry path, with its backoff.
        """
        if error.reject_reason != "inflight_limit":
            await self.allowance.rejected(None)
            raise error
        await self.allowance.rejected(error.allowance)
        if error.allowance is not None and places > error.allowance:
            raise RateLimitError(
                f"a request for {places} images needs {places} places in flight, more "
                f"than the organization's allowance of {error.allowance}; ask for fewer "
                "images per request, or ask Ideogram to raise the allowance",
                status=error.status,
                body=error.body,
                request_id=error.request_id,
                should_retry=False,
                reject_reason=error.reject_reason,
                allowance=error.allowance,
            ) from error
        logger.debug(
            "upscale %s: the allowance is full (%s); waiting for a place", image.filename, error
        )

    async def _send(
        self: _Client, url: str, fields: Mapping[str, str], image: PreparedImage, part: str
    ) -> tuple[str, int]:
        """POST the image and fields once; the body of a 2xx answer, or the error of any other."""
        if self._limiter is not None:
            await self._limiter.acquire()
        body = aiohttp.MultipartWriter("form-data")
        for name, value in fields.items():
            body.append(value).set_content_disposition("form-data", name=name)
        upload = image.payload(part)
        body.append_payload(upload)
        await upload.open()
        accept = {"Accept": "application/json"}  # pragma: no mutate (case-blind names)
        async with self._http.request(
            "POST",
            url,
            failed=f"upscale {image.filename}: connection to {self.base_url} failed",
            hint="check base_url and the network",
            upload=upload,
            data=body,
            headers=accept | self._http.auth_headers(),
            allow_redirects=False,  # pragma: no mutate (None follows no redirect either)
        ) as response:
            return await self._http.text(response), response.status
