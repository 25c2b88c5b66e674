"""One image of a Celery job: upscale it once, record the result, download it.

Delivering the same :class:`ImageTask` again is safe: a result already downloaded is
not touched, recorded result URLs are downloaded instead of paying again, and a
delivery that finds another one working on the image (its claim) steps back with
:class:`ImageBusy`.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import glob
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import attrs

from .._downloads import NAME_MAX, name_too_long
from ..batch import BatchResult
from ..client import IdeogramClient
from ..errors import IdeogramError, SharedAllowanceError, ValidationError
from ..limits import Refusals
from ..models import UpscaleRequest, UpscaleResponse
from ..retry import RetryEvent
from ..v2 import MODELS, V2Options, V2UpscaleResponse
from ._store import JobStore, Outcome

__all__ = ["ImageBusy", "ImageTask", "count_refusal", "count_retry", "run_image"]


class ImageBusy(IdeogramError):
    """Another delivery of this image holds its claim; try again once it has finished."""


def _result_name(stem: str, number: int, count: int) -> str:
    """The name the ``number``-th of ``count`` results is downloaded to, before its suffix."""
    return f"{stem}.upscaled" if count == 1 else f"{stem}.upscaled-{number}"


@attrs.frozen(kw_only=True)
class ImageTask:
    """What one task message carries: the image, where its result goes, the options.

    Paths are absolute and must name the same files on every worker (a shared file
    system). ``job`` and ``index`` place the image in an ``enqueue`` job, if any.
    """

    source: str
    out_dir: str
    stem: str = attrs.field()
    model: str | None = None
    """The v2 model's name, or ``None`` for the v1 upscaler."""
    options: dict[str, Any] = attrs.field(factory=dict)
    """The request's fields that are set, as JSON values."""
    job: str | None = None
    index: int = 0

    @stem.validator
    def _check_stem(self, _: attrs.Attribute[str], stem: str) -> None:
        """The result's name is checked before anything is paid for: it must make a file
        name of its own in ``out_dir`` (no folder, no NUL)."""
        if not isinstance(stem, str) or stem in ("", ".", ".."):
            raise ValidationError(
                f"stem {stem!r} does not name a file; give a plain name such as 'photo' "
                "(the result is saved as <stem>.upscaled.<ext>)"
            )
        if any(bad in stem for bad in ("/", "\\", "\0")):
            raise ValidationError(
                f"stem {stem!r} holds a path separator or a NUL byte; give a plain name "
                "such as 'photo' (the result is saved in out_dir as <stem>.upscaled.<ext>)"
            )
        # The download's own check, on a name with a two-digit number (more than any
        # request asks for): the longest a result gets.
        if name_too_long(Path(_result_name(stem, 10, 10))):
            raise ValidationError(
                f"stem {stem[:40]!r}... is too long for a file name ({NAME_MAX} bytes at "
                "most with '.upscaled-10.jpeg'); give a shorter one"
            )

    @classmethod
    def of(
        cls,
        source: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        request: UpscaleRequest | V2Options | None = None,
        *,
        stem: str | None = None,
        job: str | None = None,
        index: int = 0,
    ) -> ImageTask:
        """The task of upscaling ``source`` into ``out_dir`` (as ``<stem>.upscaled.<ext>``)."""
        request = request or UpscaleRequest()
        if not isinstance(request, UpscaleRequest | V2Options):
            raise ValidationError(
                f"request must be an UpscaleRequest or a v2 model's options, "
                f"got {type(request).__name__}"
            )
        fields = {
            name: value.value if isinstance(value, enum.Enum) else value
            for name, value in attrs.asdict(request).items()
            if value is not None
        }
        path = Path(os.fspath(source)).absolute()
        return cls(
            source=str(path),
            out_dir=str(Path(os.fspath(out_dir)).absolute()),
            stem=path.stem if stem is None else stem,
            model=request.model if isinstance(request, V2Options) else None,
            options=fields,
            job=job,
            index=index,
        )

    def request(self) -> UpscaleRequest | V2Options:
        """The options to upscale with (checked again: a message may come from anywhere)."""
        cls = UpscaleRequest if self.model is None else MODELS.get(self.model)
        if cls is None:
            raise ValidationError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}"
            )
        unknown = sorted(set(self.options) - {field.name for field in attrs.fields(cls)})
        if unknown:
            raise ValidationError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                "build the message with image_message()"
            )
        return cls(**self.options)

    @property
    def key(self) -> str:
        """The image's record key: the same for the same image, folder, name and options."""
        what = [self.source, self.out_dir, self.stem, self.model, self.options]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]

    def to_message(self) -> dict[str, Any]:
        """The task's argument: plain JSON values."""
        return attrs.asdict(self)

    @classmethod
    def from_message(cls, message: object) -> ImageTask:
        """The task from its message, or :class:`ValidationError` saying what is wrong."""
        try:
            if not isinstance(message, dict):
                raise TypeError(f"expected an object, got {type(message).__name__}")
            return cls(**message)
        except TypeError as exc:
            raise ValidationError(
                f"not an image task message ({exc}); build it with image_message()"
            ) from None


@attrs.define
class _Counts:
    retries: int = 0
    refused: int = 0
    """Every 429 the allowance heard of, raised or waited out."""
    refusals: Refusals = attrs.field(factory=Refusals)
    """The reasons of the 429s raised to the retry loop."""
    bound: int | None = None


_COUNTS: contextvars.ContextVar[_Counts | None] = contextvars.ContextVar(
    "ideogram_async_image_counts", default=None
)


def count_retry(event: RetryEvent) -> None:
    """The client's retry hook: count the retry for the image being worked on."""
    counts = _COUNTS.get()
    if counts is not None:
        counts.retries += 1
        counts.refusals.saw(event.error)


def count_refusal(allowance: int | None) -> None:
    """Count a 429 for the image being worked on (``allowance``: the number it gave).

    Every 429 of an upscale reaches the allowance's ``rejected``, also those the
    client waits out without a retry (``inflight_limit``); that is where this is called.
    """
    counts = _COUNTS.get()
    if counts is not None:
        counts.refused += 1
        counts.bound = allowance or counts.bound


def _message(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, IdeogramError) and text else f"{type(error).__name__}: {text}"


async def upscale_once(
    client: IdeogramClient, source: Path, request: UpscaleRequest | V2Options
) -> BatchResult[UpscaleResponse] | BatchResult[V2UpscaleResponse]:
    """The one call of the client's upscale API here: v1 or v2, with its attempts and time."""
    if isinstance(request, V2Options):
        async with client.v2.upscale_many([source], request) as v2_run:
            [v2_result] = [result async for result in v2_run]  # one result per input
            return v2_result
    async with client.upscale_many([source], request) as run:
        [result] = [result async for result in run]
        return result


def _done(outputs: tuple[str, ...]) -> bool:
    return bool(outputs) and all(os.path.isfile(output) for output in outputs)


async def run_image(
    client: IdeogramClient,
    store: JobStore,
    task: ImageTask,
    *,
    lease: float,
    allowance_key: str = "",
) -> Outcome:
    """Make sure ``task``'s image is upscaled and downloaded; return how it ended.

    ``skipped`` when its recorded outputs all exist already (``ok`` when an earlier
    delivery of the same job's task made them). Otherwise it claims the
    image for ``lease`` seconds (renewed while it works; :class:`ImageBusy` when
    another delivery holds it), downloads recorded URLs or else upscales once and
    records the URLs at once, then downloads and records the outputs. The job's
    event stream hears of the outcome. ``allowance_key`` (the name of the shared
    allowance the client holds places of) is recorded for the job's summary.
    """
    key = task.key
    record = await store.record(key)
    if record.status == "ok" and _done(record.outputs):
        # Done by an earlier delivery of this very task (whose worker died before it
        # could say so) is this job's success; done before the job, a skip.
        done: Outcome = "ok" if task.job is not None and record.job == task.job else "skipped"
        await _announce(store, task, done)
        return done
    token = secrets.token_hex(8)
    if not await store.claim(key, token, lease):
        raise ImageBusy(
            f"{task.source} is being worked on by another delivery of its task; "
            "this one steps back and looks again later"
        )
    keeper = asyncio.create_task(_keep_claim(store, key, token, lease))
    try:
        outcome = await _work(client, store, task, record.urls, allowance_key)
        await _announce(store, task, outcome)  # before the claim goes: it is heard first
        return outcome
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await store.release(key, token)


async def _announce(store: JobStore, task: ImageTask, outcome: Outcome) -> None:
    if task.job is not None:
        await store.announce(task.job, task.index, outcome)


async def _keep_claim(store: JobStore, key: str, token: str, lease: float) -> None:
    renewed = True
    while renewed:
        await asyncio.sleep(lease / 3)
        renewed = await store.renew(key, token, lease)


async def _work(
    client: IdeogramClient,
    store: JobStore,
    task: ImageTask,
    urls: tuple[str, ...],
    allowance_key: str,
) -> Outcome:
    """Upscale (unless ``urls`` were recorded) and download, recording as it goes."""
    key = task.key
    counts = _Counts()
    _COUNTS.set(counts)  # this coroutine runs in a task of its own: the count is its own
    started = time.monotonic()
    attempts = 0
    await store.write(key, source=task.source, status="", error="", allowance=allowance_key)
    try:
        if not urls:
            result = await upscale_once(client, Path(task.source), task.request())
            attempts = result.attempts
            counts.refusals.saw(result.error)
            if isinstance(result.error, SharedAllowanceError):
                raise result.error  # nothing was sent: not the image's failure; try later
            if result.error is not None:
                await store.write(key, status="failed", error=_message(result.error))
                return "failed"
            assert result.response is not None  # there is one whenever error is None
            urls = tuple(image.url for image in result.response.data if image.url)
            if not urls or len(urls) < len(result.response.data):
                withheld = sum(image.is_image_safe is False for image in result.response.data)
                why = (
                    f"{withheld} image(s) withheld by the service's safety check "
                    "(the upscale is billed)"
                    if withheld
                    else "the service answered without an image URL"
                )
                await store.write(key, status="failed", error=why)
                return "failed"
            await store.write(key, urls=urls)  # paid for: recorded before anything else
        return await _download(client, store, task, urls)
    finally:
        await store.add(
            key,
            attempts=attempts,
            seconds=time.monotonic() - started,
            retries=counts.retries,
            refused=counts.refusals.by_reason(counts.refused),
        )
        if counts.bound is not None:
            await store.write(key, bound=counts.bound)


def _remove_leftovers(out_dir: Path, names: list[str]) -> None:
    """Remove the half-written downloads (``.NAME*.part``) a killed delivery left behind.

    Only the delivery holding the image's claim calls this, after its own downloads.
    """
    for name in names:
        for leftover in out_dir.glob(f".{glob.escape(name)}*.part"):
            leftover.unlink(missing_ok=True)


async def _download(
    client: IdeogramClient, store: JobStore, task: ImageTask, urls: tuple[str, ...]
) -> Outcome:
    out_dir = Path(task.out_dir)
    names = [_result_name(task.stem, number, len(urls)) for number in range(1, len(urls) + 1)]
    written = await asyncio.gather(
        *(client.download(url, out_dir / name) for url, name in zip(urls, names, strict=True)),
        return_exceptions=True,
    )
    errors = [error for error in written if isinstance(error, BaseException)]
    await asyncio.to_thread(_remove_leftovers, out_dir, names)
    if errors:
        error = f"download failed: {_message(errors[0])}"
        await store.write(task.key, status="failed", error=error)
        return "failed"
    outputs = tuple(str(path) for path in written if isinstance(path, Path))
    await store.write(task.key, outputs=outputs, status="ok", job=task.job or "")
    return "ok"
