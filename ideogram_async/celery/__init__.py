"""Celery workers that upscale images under one allowance shared by all of them.

Run workers on any number of hosts (``pip install 'ideogram-async[celery]'``)::

    celery -A ideogram_async.celery worker --pool threads --concurrency 16

and send them work with ``ideogram-async enqueue``, or with :func:`image_message` and
``upscale_image.delay(...)`` from Python. Each worker process runs one event loop in
one thread, with one :class:`~ideogram_async.IdeogramClient` and one
:class:`~ideogram_async.limits.RedisAllowance`, started when the process
starts and closed when it stops; every task hands its coroutine to that loop. The
allowance bounds the images in flight of all workers together.

Configured from the environment (read when the module is imported for the broker,
when a worker process starts for the rest):

- ``IDEOGRAM_BROKER_URL``: the Celery broker [``redis://127.0.0.1:6379/0``]
- ``IDEOGRAM_SHARED_ALLOWANCE``: the Redis holding the allowance and the results'
  records [the broker's, when it is Redis]
- ``IDEOGRAM_ALLOWANCE``: images in flight for all workers together [10]
- ``IDEOGRAM_ALLOWANCE_KEY``: the allowance's name in Redis [the organization's own:
  a digest of the API key and the API host, the same for every worker of it]
- ``IDEOGRAM_BASE_URL``, ``IDEOGRAM_API_KEY`` or ``IDEOGRAM_API_KEY_FILE``: the service
- ``IDEOGRAM_FLAVOR``: ``proxy`` or ``official`` [official without a base URL, else proxy]
- ``IDEOGRAM_LEASE``: seconds a dead worker's places and claims stay taken [30]
- ``IDEOGRAM_VISIBILITY_TIMEOUT``: seconds before the Redis broker hands the tasks of a
  worker that died to another [3600]

An application with its own Celery app registers the same task on it with
:func:`register` (its workers then use the same environment).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs

try:
    from celery import Celery, Task, concurrency, current_app, signals
except ImportError as exc:  # pragma: no cover - exercised by installing without the extra
    raise ImportError(
        "ideogram_async.celery needs Celery: pip install 'ideogram-async[celery]'"
    ) from exc

from ..client import IdeogramClient
from ..errors import SharedAllowanceError, ValidationError
from ..limits import AllowanceWrapper, RedisAllowance
from ..models import UpscaleRequest
from ..v2 import V2Options
from ._store import PREFIX, Event, ImageRecord, JobStore, Outcome
from ._task import ImageBusy, ImageTask, count_refusal, count_retry, run_image

__all__ = [
    "PREFIX",
    "TASK_NAME",
    "Event",
    "ImageRecord",
    "JobStore",
    "WorkerSettings",
    "app",
    "broker_url",
    "celery_config",
    "enqueue",
    "image_message",
    "open_store",
    "redacted",
    "redelivery_seconds",
    "register",
    "resend",
    "shared_redis_url",
    "upscale_image",
]

logger = logging.getLogger("ideogram_async")

TASK_NAME = "ideogram_async.upscale_image"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
_T = TypeVar("_T")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name, "").strip() or None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = _env(environ, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 0.1:
        raise ValidationError(f"{name} must be a number of seconds >= 0.1, got {text!r}")
    return value


def redacted(url: str) -> str:
    """``url`` (a broker's or Redis') fit for messages: any password replaced by ``***``,
    the query dropped. A URL that cannot be read, or whose credentials hold a '/', '?'
    or '#' (an '@' after the host part), shows its scheme alone: no part of it is sure
    not to be the password."""
    hidden = f"{url.partition('://')[0]}://***"
    try:
        parts = urlsplit(url)
    except ValueError:
        return hidden
    if "@" in parts.path + parts.query + parts.fragment:
        return hidden
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def broker_url(environ: Mapping[str, str] = os.environ) -> str:
    """The broker's URL from ``IDEOGRAM_BROKER_URL`` (default: Redis on this host)."""
    return _env(environ, "IDEOGRAM_BROKER_URL") or DEFAULT_BROKER


def shared_redis_url(environ: Mapping[str, str] = os.environ, *, broker: str | None = None) -> str:
    """The Redis of the allowance and the records: ``IDEOGRAM_SHARED_ALLOWANCE``, else the
    broker's (``broker``, else ``IDEOGRAM_BROKER_URL``) when that is Redis."""
    url = _env(environ, "IDEOGRAM_SHARED_ALLOWANCE")
    if url is not None:
        return url
    broker = broker or broker_url(environ)
    if urlsplit(broker).scheme not in ("redis", "rediss", "unix"):
        raise ValidationError(
            f"the broker {redacted(broker)} is not Redis; set IDEOGRAM_SHARED_ALLOWANCE to the "
            "Redis URL (redis://HOST:PORT/DB) that holds the shared allowance and the results"
        )
    return broker


def celery_config(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The Celery settings the bundled app uses; apply them to your own app as you see fit.

    Tasks are acknowledged after they finish, one message per thread is reserved at a
    time, and the Redis broker hands a dead worker's tasks to another after
    ``IDEOGRAM_VISIBILITY_TIMEOUT`` seconds, checking every few seconds.
    """
    visibility = _seconds(environ, "IDEOGRAM_VISIBILITY_TIMEOUT", 3600.0)
    return {
        "broker_url": broker_url(environ),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, round(visibility / 4))),
            "unacked_restore_throttle": 1,
            # A worker killed during a sweep must not hold the sweep's lock for long.
            "unacked_mutex_expire": max(5, min(300, round(visibility))),
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
    }


@attrs.frozen(kw_only=True)
class WorkerSettings:
    """What a worker process needs from the environment, checked when it starts."""

    redis_url: str = attrs.field(repr=redacted)
    allowance: int
    allowance_key: str | None
    """``IDEOGRAM_ALLOWANCE_KEY``; ``None``: the organization's key, which the client names."""
    base_url: str | None
    api_key: str = attrs.field(repr=False)
    flavor: str
    lease: float

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, broker: str | None = None
    ) -> WorkerSettings:
        """The settings from ``environ``; :class:`ValidationError` names what is wrong."""
        text = _env(environ, "IDEOGRAM_ALLOWANCE") or "10"
        if not text.isdigit() or int(text) < 1:
            raise ValidationError(
                f"IDEOGRAM_ALLOWANCE must be a whole number >= 1 (images in flight for all "
                f"workers together), got {text!r}"
            )
        base_url = _env(environ, "IDEOGRAM_BASE_URL")
        flavor = _env(environ, "IDEOGRAM_FLAVOR") or ("proxy" if base_url else "official")
        if flavor not in ("proxy", "official"):
            raise ValidationError(f"IDEOGRAM_FLAVOR must be proxy or official, got {flavor!r}")
        return cls(
            redis_url=shared_redis_url(environ, broker=broker),
            allowance=int(text),
            allowance_key=_env(environ, "IDEOGRAM_ALLOWANCE_KEY"),
            base_url=base_url,
            api_key=_api_key(environ),
            flavor=flavor,
            lease=_seconds(environ, "IDEOGRAM_LEASE", 30.0),
        )


def _api_key(environ: Mapping[str, str]) -> str:
    key = _env(environ, "IDEOGRAM_API_KEY")
    path = _env(environ, "IDEOGRAM_API_KEY_FILE")
    if key is None and path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(
                f"cannot read IDEOGRAM_API_KEY_FILE {path}: {exc}; point it at a file "
                "holding the key"
            ) from None
        if key is None:
            raise ValidationError(f"IDEOGRAM_API_KEY_FILE {path} is empty; put the key in it")
    if key is None:
        raise ValidationError(
            "no API key for the workers: set IDEOGRAM_API_KEY or IDEOGRAM_API_KEY_FILE"
        )
    return key


class _CountedAllowance(AllowanceWrapper):
    """The shared allowance, counting each 429 for the image whose request got it."""

    async def rejected(self, allowance: int | None) -> None:
        count_refusal(allowance)
        await self.inner.rejected(allowance)


class _Runtime:
    """One event loop in one thread with the process's client, allowance and records."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ideogram-async-loop", daemon=True
        )
        self._thread.start()
        try:
            self.client, self.store = self.run(self._open())
        except BaseException:
            self._stop()
            raise

    async def _open(self) -> tuple[IdeogramClient, JobStore]:
        settings = self.settings
        allowance = RedisAllowance(
            settings.redis_url,
            settings.allowance,
            key=settings.allowance_key,
            lease=settings.lease,
        )
        client: IdeogramClient | None = None
        try:
            # The client names the allowance's key (its organization's, unless
            # IDEOGRAM_ALLOWANCE_KEY named one) before anything is asked of Redis.
            client = IdeogramClient(
                api_key=settings.api_key,
                base_url=settings.base_url,
                flavor=settings.flavor,
                allowance=_CountedAllowance(allowance),
                on_retry=count_retry,
            )
            await allowance.connect()
        except BaseException:
            if client is not None:
                await client.aclose()
            await allowance.aclose()
            raise
        self._allowance = allowance
        return client, JobStore.from_url(settings.redis_url, redacted(settings.redis_url))

    @property
    def allowance_key(self) -> str:
        """The key the workers' shared allowance is kept under."""
        return self._allowance.key or ""

    def run(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the loop and return its result (from any thread)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def close(self) -> None:
        """Close the client, the allowance and the records, then stop the loop."""
        try:
            self.run(self._aclose())
        finally:
            self._stop()

    async def _aclose(self) -> None:
        try:
            await self.client.aclose()
            await self.store.aclose()
        finally:
            await self._allowance.aclose()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


_runtimes: dict[int, _Runtime] = {}
_runtimes_lock = threading.Lock()


def _runtime(celery_app: Celery) -> _Runtime:
    """This process's runtime, started now when the worker signals did not start it."""
    with _runtimes_lock:
        runtime = _runtimes.get(os.getpid())
        if runtime is None:
            settings = WorkerSettings.from_env(broker=str(celery_app.conf.broker_url or ""))
            runtime = _runtimes[os.getpid()] = _Runtime(settings)
        return runtime


def _close_runtime() -> None:
    with _runtimes_lock:
        runtime = _runtimes.pop(os.getpid(), None)
    if runtime is not None:
        runtime.close()


def _start(celery_app: Celery) -> None:
    """Start this process's runtime; a worker with a wrong setting stops at once, saying why.

    A Redis that does not answer yet is no reason to stop: the tasks retry until it does.
    """
    try:
        _runtime(celery_app)
    except ValidationError as exc:
        raise SystemExit(f"ideogram_async.celery: {exc}") from None  # Celery logs Exceptions
    except SharedAllowanceError as exc:
        logger.warning("%s; the tasks retry until it answers", exc)


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """A worker starts: with a pool of threads (or solo) its tasks run in this process."""
    pool = concurrency.get_implementation(sender.pool_cls)
    if pool.__module__ != "celery.concurrency.prefork":
        _start(sender.app)


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """A pool process starts (prefork children, solo): it gets a runtime of its own."""
    _start(current_app)  # a prefork child makes the worker's app the current one


@signals.worker_process_shutdown.connect
def _on_worker_process_shutdown(**_: Any) -> None:
    _close_runtime()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    _close_runtime()


def _upscale_image(task: Task[Any, Any], message: dict[str, Any]) -> Outcome:
    """Upscale one image and download it, once, whatever happens to the workers."""
    image = ImageTask.from_message(message)
    try:
        runtime = _runtime(task.app)
        return runtime.run(
            run_image(
                runtime.client,
                runtime.store,
                image,
                lease=runtime.settings.lease,
                allowance_key=runtime.allowance_key,
            )
        )
    except ImageBusy as exc:
        raise task.retry(exc=exc, countdown=runtime.settings.lease / 3) from exc
    except SharedAllowanceError as exc:  # Redis is unreachable: nothing was sent; later
        raise task.retry(exc=exc, countdown=min(60, 2**task.request.retries)) from exc


def register(celery_app: Celery) -> Task[Any, Any]:
    """Register the upscale task on ``celery_app`` (your own app) and return it.

    The task is named :data:`TASK_NAME`, acknowledged late and rejected (so requeued)
    when its worker is lost; it retries without end while another delivery holds the
    image or Redis is unreachable. Consider :func:`celery_config` for the app's settings.
    """
    registered: Task[Any, Any] = celery_app.task(
        name=TASK_NAME,
        shared=False,  # on this app only, not on every app this process finalizes
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
    )(_upscale_image)
    return registered


app = Celery("ideogram_async", set_as_current=False)
app.conf.update(celery_config())
upscale_image = register(app)


def image_message(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    request: UpscaleRequest | V2Options | None = None,
    *,
    stem: str | None = None,
) -> dict[str, Any]:
    """The argument of the upscale task for one image: ``upscale_image.delay(message)``.

    Paths are made absolute here; every worker must see them (a shared file system).
    The result is saved as ``out_dir/<stem>.upscaled.<ext>`` (``stem``: the source's).
    """
    return ImageTask.of(source, out_dir, request, stem=stem).to_message()


def open_store(redis_url: str) -> JobStore:
    """The workers' records and jobs in the Redis at ``redis_url`` (close it when done)."""
    return JobStore.from_url(redis_url, redacted(redis_url))


async def enqueue(
    task: Task[Any, Any],
    store: JobStore,
    job: str,
    sources: Sequence[tuple[str | os.PathLike[str], str]],
    out_dir: str | os.PathLike[str],
    request: UpscaleRequest | V2Options | None = None,
) -> list[dict[str, Any]]:
    """Record the job ``job`` and send one ``task`` per ``(source, stem)`` pair, in order.

    Returns the messages sent, in order (for :func:`resend`). Its progress is then in
    ``store`` (``events``, ``record``): an image finishes once whichever delivery of
    its task gets it done.
    """
    messages = [
        ImageTask.of(source, out_dir, request, stem=stem, job=job, index=index).to_message()
        for index, (source, stem) in enumerate(sources)
    ]
    if not messages:
        raise ValidationError("nothing to enqueue: pass at least one image")
    keys = [ImageTask.from_message(message).key for message in messages]
    await store.create_job(job, keys, messages[0]["out_dir"])
    await resend(task, messages)
    return messages


async def resend(task: Task[Any, Any], messages: Sequence[dict[str, Any]]) -> None:
    """Send ``task`` once per message (again): safe, as every delivery is idempotent.

    The messages go over a connection of their own to the broker the app is configured
    with now, not through the app's producer pool: that pool is made once per process,
    for the first broker sent to, so a later ``broker_url`` would be ignored.
    """

    def send() -> None:
        with task.app.connection_for_write() as connection:
            producer = task.app.amqp.Producer(connection)
            for message in messages:
                task.apply_async((message,), producer=producer)

    await asyncio.to_thread(send)


def redelivery_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How long the broker may take to give a dead worker's tasks to another one."""
    options = celery_config(environ)["broker_transport_options"]
    return float(options["visibility_timeout"] + options["unacked_restore_interval"])
