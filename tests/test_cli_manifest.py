"""The manifest never loses, and ``--resume`` never buys twice, a result that was paid for.

Real ``ideogram-async`` runs (in-process, or subprocesses where a signal or a resource
limit needs one; see ``test_cli.py``) against an in-process emulator, whose counters say
how often each input was upscaled (downloads of recorded URLs are counted apart): a
run interrupted while its results download, a disk that fills (a small tmpfs, or a
file size limit where mounting is not allowed), a file system that turns read-only,
file names that are not UTF-8, and settings that change between runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import locale
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest
from PIL import Image

from ideogram_async import (
    APIStatusError,
    IdeogramClient,
    LocalBudget,
    NanoBananaPro,
    RetryPolicy,
    TopazBloom2,
    UpscaledImage,
    UpscaleRequest,
    UpscaleResponse,
    V2UpscaledImage,
    V2UpscaleResponse,
)
from ideogram_async.cli import main
from ideogram_async.cli._downloads import (
    Saved,
    _expired,
    paid_urls,
    refusal,
    refused_folder,
    save,
)
from ideogram_async.cli._inputs import Source, UsageError, read_key_file
from ideogram_async.cli._manifest import (
    Outcome,
    Record,
    parse_lines,
    settings_of,
    text,
    utc_now,
)
from ideogram_async.cli._manifest_io import (
    Manifest,
    ManifestLock,
    fallback_path,
    read_records,
    take_in_fallback,
)
from ideogram_async.cli._pipeline import Job, View, nothing_left
from ideogram_async.cli._resume import Recorded, ResumePlan, differences, plan_resume
from ideogram_async.cli._summary import SharedAt
from ideogram_async.testing import Emulator, Fault, FaultPlan

from .test_cli import (
    KEY,
    assert_clean,
    cli_env,
    finish,
    read_manifest,
    run_main,
    save_image,
    size_of,
    start_cli,
    upscale_args,
)


def noise(path: Path, side: int, seed: int) -> Path:
    """A PNG of random pixels: it hardly compresses, so its results fill a disk fast."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upscales_per_input(emulator: Emulator, inputs: list[Path]) -> list[int]:
    """How many upscale requests the service received for each input, in order."""
    sent = Counter(upload.sha256 for upload in emulator.stats.uploads)
    return [sent[digest(path)] for path in inputs]


def results(out: Path, inputs: list[Path]) -> list[tuple[int, int]]:
    """The size of each input's one result (it must exist and decode; nothing else is there)."""
    assert len(list(out.iterdir())) == len(inputs)
    return [size_of(out / f"{path.stem}.upscaled.png") for path in inputs]


class FirstDownloadsHang(FaultPlan):
    """Holds the first download of every result (other downloads are served at once)
    and sets :attr:`arrived` once ``count`` results are being downloaded."""

    def __init__(self, count: int) -> None:
        super().__init__([Fault.slow(300)], per_upload=True)
        self.arrived = asyncio.Event()
        self._count = count
        self._seen: set[str] = set()

    def next_fault(self, upload: str | None = None) -> Fault | None:
        assert upload is not None
        self._seen.add(upload)
        if len(self._seen) >= self._count:
            self.arrived.set()
        return super().next_fault(upload)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_run_stopped_while_its_results_download_is_resumed_without_buying_again(
    signum: signal.Signals, tmp_path: Path
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i:02d}.png", (8, 6), i) for i in range(12)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    hang = FirstDownloadsHang(len(inputs))
    async with Emulator(KEY, image_faults=hang) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        process = await start_cli(*args, "--concurrency", "12")
        async with asyncio.timeout(30):
            await hang.arrived.wait()  # every result paid for, none saved yet
        process.send_signal(signum)
        first = await finish(process)

        assert first.returncode == 130, first.stderr
        assert_clean(first)
        assert "12 image(s) already upscaled are recorded with their result URLs" in first.stdout
        records = read_manifest(manifest)
        assert [record["status"] for record in records] == ["upscaled"] * 12
        assert all(len(record["urls"]) == 1 and record["upscaled_at"] for record in records)
        assert not out.exists()  # no partial file: the empty folder was removed

        second = await run_main(*args, "--resume")
        assert second.returncode == 0, second.stderr
        assert_clean(second)
        assert "Downloading the results of 12 image(s) already upscaled" in second.stdout
        assert upscales_per_input(emulator, inputs) == [1] * 12
        assert emulator.stats.requests == 12
    assert results(out, inputs) == [(16, 12)] * 12
    assert {record["status"] for record in read_manifest(manifest)} == {"ok"}


async def line_with(process: asyncio.subprocess.Process, text: str) -> str:
    """The first line of the command's output that holds ``text``."""
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while line := await process.stdout.readline():
            if text.encode() in line:
                return line.decode()
    raise AssertionError(f"the command ended without saying {text!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_an_interrupt_lets_the_calls_already_sent_finish_and_records_them(
    signum: signal.Signals, tmp_path: Path
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i:02d}.png", (8, 6), i) for i in range(10)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        emulator.pause()
        process = await start_cli(*args, "--concurrency", "3")
        await emulator.wait_in_flight(3)
        process.send_signal(signum)
        said = await line_with(process, "Stopping:")
        assert "waiting for the 3 upscale call(s) already sent" in said
        emulator.resume()
        first = await finish(process)
        assert first.returncode == 130, first.stderr
        assert_clean(first)
        assert "3 image(s) already upscaled are recorded with their result URLs" in first.stdout
        assert [r["status"] for r in read_manifest(manifest)] == ["upscaled"] * 3
        assert emulator.stats.requests == 3  # nothing new was sent after the interrupt

        second = await run_main(*args, "--resume")
        assert second.returncode == 0, second.stderr
        assert upscales_per_input(emulator, inputs) == [1] * 10
    assert results(out, inputs) == [(16, 12)] * 10


async def test_a_second_interrupt_abandons_the_calls_in_flight(tmp_path: Path) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i:02d}.png", (8, 6), i) for i in range(5)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        emulator.pause()
        process = await start_cli(*args, "--concurrency", "2")
        await emulator.wait_in_flight(2)
        process.send_signal(signal.SIGINT)
        await line_with(process, "Stopping:")
        process.send_signal(signal.SIGINT)
        first = await finish(process)  # while the service still holds both calls
        emulator.resume()
        assert first.returncode == 130, first.stderr
        assert_clean(first)
        assert not manifest.exists()  # nothing was recorded: the run left nothing behind

        second = await run_main(*args, "--resume")
        assert second.returncode == 0, second.stderr
        # The two abandoned calls are the price of not waiting: they are sent again.
        assert sorted(upscales_per_input(emulator, inputs)) == [1, 1, 1, 2, 2]
    assert results(out, inputs) == [(16, 12)] * 5


async def test_a_failed_download_keeps_its_urls_and_resume_fetches_them(tmp_path: Path) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(3)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    refused_once = FaultPlan([Fault.status(503)], per_upload=True)
    async with Emulator(KEY, image_faults=refused_once) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        first = await run_main(*args, "--retries", "0")
        assert first.returncode == 1
        records = read_manifest(manifest)
        assert {record["status"] for record in records} == {"failed"}
        assert all(record["error"].startswith("download failed: HTTP 503") for record in records)
        assert all(len(record["urls"]) == 1 for record in records)

        second = await run_main(*args, "--resume")
        assert second.returncode == 0, second.stderr
        assert upscales_per_input(emulator, inputs) == [1, 1, 1]
        assert emulator.stats.image_downloads == 3
    assert results(out, inputs) == [(16, 12)] * 3


@pytest.mark.parametrize("gone", [410, 404])
async def test_resume_upscales_again_when_a_recorded_url_has_expired(
    tmp_path: Path, gone: int
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(2)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    now = [0.0]
    refused_once = FaultPlan([Fault.status(503)], per_upload=True)
    async with Emulator(KEY, image_faults=refused_once, clock=lambda: now[0]) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args, "--retries", "0")).returncode == 1
        if gone == 410:
            now[0] += 24 * 3600  # a day later: the service has dropped its results
        else:  # a URL the image host never had
            lines = manifest.read_text().replace("/images/", "/images/f0-").encode()
            manifest.write_bytes(lines)
        again = await run_main(*args, "--resume", "-v")
        assert again.returncode == 0, again.stderr
        assert "2 recorded result URL(s) expired: upscaling again." in again.stdout
        for name in ("img-0.png", "img-1.png"):  # -v follows the calls made again too
            assert f"upscale {name}: attempt 1 ok after " in again.stderr
        assert upscales_per_input(emulator, inputs) == [2, 2]
    assert results(out, inputs) == [(16, 12)] * 2


class Arrivals(FaultPlan):
    """Notes ``("upscale", sha256 of its file)`` in ``order`` as each upscale request
    arrives (the emulator asks a per-upload plan once it has read the body); no faults."""

    def __init__(self, order: list[tuple[str, str]]) -> None:
        super().__init__(per_upload=True)
        self._order = order

    def next_fault(self, upload: str | None = None) -> Fault | None:
        assert upload is not None
        self._order.append(("upscale", upload))
        return super().next_fault(upload)


class ServedImages(logging.Handler):
    """Notes ``("downloaded", path)`` in ``order`` as the emulator ends each image request:
    its request log (logger ``ideogram_async.testing``) has a line once an answer is sent."""

    def __init__(self, order: list[tuple[str, str]]) -> None:
        super().__init__()
        self._order = order

    def emit(self, record: logging.LogRecord) -> None:
        if served := re.search(r'"GET (/images/\S+) ', record.getMessage()):
            self._order.append(("downloaded", served[1]))

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """The emulator's request log on, and heard, for the block."""
        log = logging.getLogger("ideogram_async.testing")
        level = log.level
        log.setLevel(logging.INFO)
        log.addHandler(self)
        try:
            yield
        finally:
            log.removeHandler(self)
            log.setLevel(level)


async def test_resume_downloads_every_recorded_result_before_it_upscales_anything(
    tmp_path: Path,
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(3)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    order: list[tuple[str, str]] = []
    # A result's second download (--resume's) is held 0.3 s: an upscale sent alongside
    # it would arrive before it ends.
    held = FaultPlan([None, Fault.slow(0.3)], per_upload=True)
    async with Emulator(KEY, faults=Arrivals(order), image_faults=held) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args)).returncode == 0
        recorded = {urlsplit(url).path for r in read_manifest(manifest) for url in r["urls"]}
        for path in inputs:  # lost: downloaded again from the URLs recorded
            (out / f"{path.stem}.upscaled.png").unlink()
        new = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(3, 5)]
        order.clear()
        with ServedImages(order).listening():
            again = await run_main(*args, "--resume")
        assert again.returncode == 0, again.stderr
        assert_clean(again)
        assert upscales_per_input(emulator, inputs + new) == [1] * 5
    # Every recorded result was downloaded, its image sent whole, before the service
    # was asked for the first new upscale.
    first = min(order.index(("upscale", digest(path))) for path in new)
    assert sorted(order[:first]) == sorted(("downloaded", path) for path in recorded)
    assert len(recorded) == 3
    assert results(out, inputs + new) == [(16, 12)] * 5


# -- a disk that fills ------------------------------------------------------------------


class Disk:
    """A folder whose writes fail for want of room: a small tmpfs, or a file size limit
    for the command's process (``preexec_fn``) where mounting is not allowed."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.kind = kind

    def limit(self) -> Callable[[], None] | None:
        """What the command must run under for the disk to be small."""
        if self.kind == "tmpfs":
            return None

        def small_files() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

        return small_files

    def grow(self) -> None:
        """Give the disk room (the next run has no limit either way)."""
        if self.kind == "tmpfs":
            remount(self.folder, "size=64m")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, otherwise: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``folder`` for the block (unmounted after), or a
    skip that says why none can be mounted here and ``otherwise``: what covers the case."""
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip(f"no mount command: {otherwise}")
    tried = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if tried.returncode != 0:
        reason = tried.stderr.decode(errors="replace").strip()
        pytest.skip(f"cannot mount a tmpfs ({reason}): {otherwise}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, options: str) -> None:
    """Change the options of the file system mounted on ``folder`` (``ro``, ``size=64m``)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "file-size-limit":
        yield Disk(folder, "file-size-limit")
        return
    with tmpfs(folder, "64k", "the file-size-limit case covers a full disk"):
        yield Disk(folder, "tmpfs")


async def test_a_full_disk_stops_the_run_and_resume_buys_nothing_twice(
    disk: Disk, tmp_path: Path
) -> None:
    inputs = [noise(tmp_path / "in" / f"img-{i:02d}.png", 48, i) for i in range(12)]
    out, manifest = disk.folder / "out", disk.folder / "run.jsonl"
    temp = tmp_path / "temp"  # where a manifest that cannot be written leaves its lines
    temp.mkdir()
    env = {**cli_env(), "TMPDIR": str(temp)}
    async with Emulator(KEY, latency=0.3) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        summary = tmp_path / "summary.json"  # off the full disk
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-W", "default", "-m", "ideogram_async"),
            *args,
            *("--json", str(summary)),
            "--concurrency",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=disk.limit(),
        )
        first = await finish(process)
        sent = emulator.stats.requests

        assert first.returncode == 1, first.stderr
        assert_clean(first)
        stopped = [line for line in first.stderr.splitlines() if line.startswith("Stopped:")]
        assert len(stopped) == 1
        assert f"Stopped: cannot write into {out} (" in stopped[0]
        assert "Nothing more was sent" in stopped[0]
        assert sent < len(inputs)  # the rest were never sent
        assert max(upscales_per_input(emulator, inputs)) == 1
        # The summary is shown and written however the run ends.
        written = json.loads(summary.read_text())
        assert written["total"] == len(inputs)
        assert written["skipped"] >= len(inputs) - sent  # never sent: not attempted
        assert written["failed"] >= 1  # the result the disk refused
        done = f"Done: {written['succeeded']} of {len(inputs)} image(s) upscaled"
        assert done in first.stdout

        disk.grow()
        second = await run_main(*args, "--resume", env=env)
        assert second.returncode == 0, second.stderr
        assert_clean(second)
        # Every input upscaled exactly once, over both runs: what the first run had paid
        # for was recorded with its URLs and downloaded, not bought again.
        assert upscales_per_input(emulator, inputs) == [1] * 12
    assert results(out, inputs) == [(96, 96)] * 12
    assert {record["status"] for record in read_manifest(manifest)} == {"ok"}
    assert list(temp.iterdir()) == []  # any records left there were taken in


class TurnsReadOnly(FaultPlan):
    """Remounts ``folder`` read-only as the ``count``-th image request arrives, before it
    is answered, as a kernel does with a file system that met an I/O error."""

    def __init__(self, folder: Path, count: int) -> None:
        super().__init__()
        self._folder = folder
        self._count = count

    def next_fault(self, upload: str | None = None) -> Fault | None:
        fault = super().next_fault(upload)
        if self.count == self._count:
            remount(self._folder, "ro")
        return fault


async def test_a_read_only_file_system_stops_the_run_and_resume_buys_nothing_twice(
    tmp_path: Path,
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(8)]
    folder = tmp_path / "disk"
    folder.mkdir()
    out = folder / "out"
    # Off the disk: a file open for writing keeps a file system from turning read-only.
    manifest = tmp_path / "run.jsonl"
    with tmpfs(folder, "1m", "a read-only file system needs a mount of its own"):
        out.mkdir()
        async with Emulator(KEY, image_faults=TurnsReadOnly(folder, 3)) as emulator:
            args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
            # One call, so one download, at a time: the third finds no file open on the disk.
            first = await run_main(*args, "--concurrency", "1")
            sent = emulator.stats.requests

            assert first.returncode == 1, first.stderr
            assert_clean(first)
            stopped = [line for line in first.stderr.splitlines() if line.startswith("Stopped:")]
            assert len(stopped) == 1
            assert stopped[0].startswith(
                f"Stopped: cannot write into {out} (Read-only file system). Nothing more was "
                f"sent: 2 of {len(inputs)} image(s) upscaled, "
            )
            assert "already upscaled are recorded with their result URLs" in stopped[0]
            assert sent < len(inputs)  # the rest were never sent
            assert max(upscales_per_input(emulator, inputs)) == 1
            # Every result the service sent back is recorded with its URL; the two saved
            # before the disk turned read-only as done.
            records = {Path(r["source"]).name: r for r in read_manifest(manifest)}
            sent_per_input = zip(inputs, upscales_per_input(emulator, inputs), strict=True)
            assert sorted(records) == [path.name for path, times in sent_per_input if times]
            assert all(len(record["urls"]) == 1 for record in records.values())
            done = sorted(name for name, r in records.items() if r["status"] == "ok")
            assert done == ["img-0.png", "img-1.png"]
            assert records["img-2.png"]["error"] == (
                f"download failed: cannot write {out / 'img-2.upscaled.png'}: Read-only file "
                f"system; check the folder and free space"
            )
            assert sorted(p.name for p in out.iterdir()) == [
                "img-0.upscaled.png",
                "img-1.upscaled.png",
            ]

            remount(folder, "rw")
            second = await run_main(*args, "--resume")
            assert second.returncode == 0, second.stderr
            assert_clean(second)
            # Every input upscaled exactly once, over both runs.
            assert upscales_per_input(emulator, inputs) == [1] * len(inputs)
        assert results(out, inputs) == [(16, 12)] * len(inputs)
    assert {record["status"] for record in read_manifest(manifest)} == {"ok"}


async def test_a_manifest_that_refuses_writes_stops_the_run_and_resume_takes_its_lines_in(
    tmp_path: Path,
) -> None:
    full = Path("/dev/full")  # every write fails: no space left on device
    if not full.exists():
        pytest.skip("no /dev/full here")
    inputs = [save_image(tmp_path / "in" / f"img-{i:02d}.png", (8, 6), i) for i in range(8)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    manifest.symlink_to(full)
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**cli_env(), "TMPDIR": str(temp)}
    async with Emulator(KEY, latency=0.3) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        first = await run_main(*args, "--concurrency", "2", env=env)
        assert first.returncode == 1, first.stderr
        assert_clean(first)
        assert f"Stopped: cannot write the manifest {manifest} (No space left on device)" in (
            first.stderr
        )
        assert "could not be written (No space left on device)" in first.stderr
        assert "which --resume takes in once" in first.stderr
        assert emulator.stats.requests < len(inputs)
        (saved,) = temp.iterdir()

        manifest.unlink()  # room again
        second = await run_main(*args, "--resume", env=env)
        assert second.returncode == 0, second.stderr
        took = r"Took in [1-8] record\(s\) an earlier run could not write to "
        took += re.escape(f"{manifest}.\n")
        assert re.match(took, second.stdout), second.stdout  # the first line it prints
        assert upscales_per_input(emulator, inputs) == [1] * 8
    assert not saved.exists()
    assert results(out, inputs) == [(16, 12)] * 8
    assert len(read_manifest(manifest)) == 8


def test_a_manifest_that_refuses_writes_keeps_its_lines_elsewhere_or_shows_them(
    tmp_path: Path,
) -> None:
    full = Path("/dev/full")  # every write fails: no space left on device
    if not full.exists():
        pytest.skip("no /dev/full here")
    source = Source(tmp_path / "a.png", "a.png")
    paid = Outcome(source=source, ok=False, urls=("https://img.example/a.png",), attempts=1)
    settings = {"api": "v1", "flavor": "proxy", "num_images": 1}
    manifest = tmp_path / "run.jsonl"
    manifest.symlink_to(full)

    kept = Manifest(manifest, append=True, settings=settings, fallback_dir=tmp_path)
    kept.write(paid)
    assert kept.refused is not None  # before closing, which reads back what was written
    kept.close()
    problem = kept.problem()
    assert problem is not None
    assert f"The manifest {manifest} could not be written (No space left on device)" in problem
    assert f"1 record(s) are saved in {kept.fallback}, which --resume takes in" in problem
    (saved,) = kept.fallback.read_text().splitlines()
    assert json.loads(saved)["urls"] == ["https://img.example/a.png"]

    manifest.unlink()  # the disk has room again
    assert take_in_fallback(manifest, tmp_path) == 1
    assert not kept.fallback.exists()
    assert read_records(manifest)[str(source.path)].urls == ("https://img.example/a.png",)

    (tmp_path / "file").write_text("")
    lost = Manifest(full, append=True, settings=settings, fallback_dir=tmp_path / "file")
    lost.write(paid)
    lost.close()
    problem = lost.problem()
    assert problem is not None
    assert "1 record(s) could not be saved anywhere; here they are" in problem
    assert '"urls": ["https://img.example/a.png"]' in problem


def test_once_the_fallback_fails_every_later_line_stays_unsaved_in_order(
    tmp_path: Path,
) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    settings = {"api": "v1"}
    manifest = tmp_path / "run.jsonl"
    manifest.symlink_to(full)

    def paid(name: str, url: str) -> Outcome:
        return Outcome(source=Source(tmp_path / name, name), ok=False, urls=(url,))

    first, second = paid("a.png", "https://x/a"), paid("a2.png", "https://x/a2")
    big, last = paid("b.png", "https://x/" + "b" * 9000), paid("c.png", "https://x/c")
    kept = Manifest(manifest, append=True, settings=settings, fallback_dir=tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the fallback's disk fills
    try:
        kept.write(first)
        kept.write(second)
        kept.write(big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    kept.write(last)  # room again, but the fallback already failed: kept to be shown
    assert (kept.written, kept.diverted) == (0, 2)
    assert kept.unsaved == [big.line(settings), last.line(settings)]
    kept.close()
    lines = (big.line(settings) + last.line(settings)).decode().rstrip("\n")
    assert kept.problem() == (
        f"The manifest {manifest} could not be written (No space left on device): "
        f"2 record(s) are saved in {kept.fallback}, which --resume takes in once {manifest} "
        f"can be written; 2 record(s) could not be saved anywhere; here they are, to keep "
        f"(their urls hold the results paid for):\n{lines}."
    )
    assert kept.fallback.read_bytes().startswith(first.line(settings) + second.line(settings))


# -- file names that are not UTF-8 -------------------------------------------------------


async def test_a_file_name_that_is_not_utf8_is_upscaled_and_recorded_losslessly(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    odd = save_image(Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")), (8, 6), 1)
    plain = save_image(folder / "naïve.png", (10, 6), 2)
    inputs = [odd, plain]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [folder], out), "--manifest", str(manifest)]
        run = await run_main(*args)
        assert run.returncode == 0, run.stderr
        assert_clean(run)
        assert sorted(str(upload.filename) for upload in emulator.stats.uploads) == [
            "caf%E9.png",  # the name's own bytes, the one that is not UTF-8 percent-encoded
            "naïve.png",
        ]
        # One result per input, each named after its input's own bytes.
        assert results(out, inputs) == [(16, 12), (20, 12)]
        summary = tmp_path / "summary.json"
        again = await run_main(*args, "--resume", "--json", str(summary))
        assert again.returncode == 0, again.stderr
        assert "Nothing left to do." in again.stdout.splitlines()
        # Nothing left still ends with the summary, shown and written.
        assert "Done: 0 of 2 image(s) upscaled, 2 skipped in " in again.stdout
        assert f"Summary: {summary}" in again.stdout
        written = json.loads(summary.read_text())
        assert (written["total"], written["succeeded"], written["skipped"]) == (2, 0, 2)
        assert results(out, inputs) == [(16, 12), (20, 12)]

        # Its result gone, --resume finds the odd name's record by the name's bytes and
        # downloads the result again from its recorded URL, to that same name.
        result = Path(os.fsdecode(os.fsencode(out) + b"/caf\xe9.upscaled.png"))
        result.unlink()
        third = await run_main(*args, "--resume")
        assert third.returncode == 0, third.stderr
        assert_clean(third)
        assert "Downloading the results of 1 image(s) already upscaled" in third.stdout
        assert results(out, inputs) == [(16, 12), (20, 12)]
        # Each input was upscaled once over the three runs: nothing was bought twice.
        assert upscales_per_input(emulator, inputs) == [1, 1]
        assert emulator.stats.requests == 2
    manifest.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    records = {record["source"]: record for record in read_manifest(manifest)}
    record = records[str(folder.resolve() / "caf\ufffd.png")]
    assert base64.b64decode(record["source_bytes"]) == os.fsencode(odd.resolve())
    assert [base64.b64decode(raw) for raw in record["outputs_bytes"]] == [os.fsencode(result)]
    assert "source_bytes" not in records[str(plain.resolve())]  # UTF-8 names as they are


# -- settings --------------------------------------------------------------------------


async def test_resume_redoes_what_was_made_with_other_settings_and_says_so(
    tmp_path: Path,
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (10, 6), i) for i in range(3)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        base = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        v2 = [*base, "--model", "topaz-standard-2"]
        assert (await run_main(*v2)).returncode == 0
        (record, *_) = read_manifest(manifest)
        assert record["settings"] == {
            "api": "v2",
            "model": "topaz-standard-2",
            "upscale_factor": "x2",
        }
        same = await run_main(*v2, "--factor", "x2", "--resume")  # x2 is the default
        assert same.returncode == 0, same.stderr
        assert same.stdout.splitlines()[1:3] == [
            "Nothing left to do.",
            "Done: 0 of 3 image(s) upscaled, 3 skipped in 0.0s.",
        ]
        bigger = await run_main(*v2, "--factor", "x4", "--resume")
        assert bigger.returncode == 0, bigger.stderr
        assert (
            f"Redoing 3 image(s) that {manifest} records as made with other settings than "
            f"this run's (upscale_factor x2 -> x4)."
        ) in bigger.stdout
        assert len(emulator.stats.v2_uploads) == 6
        assert [size_of(out / f"img-{i}.upscaled.png") for i in range(3)] == [(40, 24)] * 3

        # Back to v1: another upscaler altogether.
        v1 = await run_main(*base, "--prompt", "crisp", "--resume")
        assert "Redoing 3 image(s)" in v1.stdout
        assert "api v2 -> v1" in v1.stdout
        assert upscales_per_input(emulator, inputs) == [1, 1, 1]  # v1 requests
        ok = await run_main(*base, "--prompt", "crisp", "--num-images", "1", "--resume")
        assert "Nothing left to do." in ok.stdout
    assert {record["settings"]["prompt"] for record in read_manifest(manifest)} == {"crisp"}


async def test_a_resumed_runs_summary_counts_what_it_skipped_and_what_it_downloaded(
    tmp_path: Path,
) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(4)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    summary = tmp_path / "summary.json"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args)).returncode == 0
        (out / "img-0.upscaled.png").unlink()  # downloaded again from its recorded URL
        inputs.append(save_image(tmp_path / "in" / "img-4.png", (8, 6), 4))  # new: upscaled
        again = await run_main(*args, "--resume", "--json", str(summary))
        assert again.returncode == 0, again.stderr
        assert_clean(again)
        assert upscales_per_input(emulator, inputs) == [1] * 5
    assert "Done: 2 of 5 image(s) upscaled, 3 skipped in " in again.stdout
    written = json.loads(summary.read_text())
    assert (written["total"], written["succeeded"], written["skipped"]) == (5, 2, 3)
    assert results(out, inputs) == [(16, 12)] * 5


async def test_records_without_settings_are_done_again(tmp_path: Path) -> None:
    save_image(tmp_path / "in" / "a.png", (8, 6))
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args)).returncode == 0
        (record,) = read_manifest(manifest)
        del record["settings"]  # as an older version wrote it
        manifest.write_text(json.dumps(record) + "\n")
        again = await run_main(*args, "--resume")
        assert emulator.stats.requests == 2
    assert "Redoing 1 image(s)" in again.stdout
    assert "(none recorded)" in again.stdout


# -- a torn manifest ---------------------------------------------------------------------


async def test_a_torn_line_costs_only_its_own_input(tmp_path: Path) -> None:
    inputs = [save_image(tmp_path / "in" / f"img-{i}.png", (8, 6), i) for i in range(4)]
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = [*upscale_args(emulator, [tmp_path / "in"], out), "--manifest", str(manifest)]
        assert (await run_main(*args)).returncode == 0
        by_name = {Path(r["source"]).name: json.dumps(r) for r in read_manifest(manifest)}
        torn = by_name["img-1.png"]
        # A killed run tore img-1's line; another run appended img-2's right after it,
        # and img-3's line was torn last, without its newline.
        manifest.write_text(
            by_name["img-0.png"]
            + "\n"
            + torn[: len(torn) // 2]
            + by_name["img-2.png"]
            + "\n"
            + by_name["img-3.png"][:40]
        )
        again = await run_main(*args, "--resume")
        assert again.returncode == 0, again.stderr
        assert "Skipping 2 of 4 image(s)" in again.stdout
        assert upscales_per_input(emulator, inputs) == [1, 2, 1, 2]
    records = read_manifest(manifest)  # whole lines again, one per input
    assert sorted(Path(r["source"]).name for r in records) == [p.name for p in inputs]


# -- what a run leaves behind ------------------------------------------------------------


async def test_a_run_leaves_no_lock_file_and_a_lock_error_is_a_sentence(tmp_path: Path) -> None:
    save_image(tmp_path / "in" / "a.png", (8, 6))
    manifest = tmp_path / "records" / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [tmp_path / "in"], tmp_path / "out")
        run = await run_main(*args, "--manifest", str(manifest))
        assert run.returncode == 0, run.stderr
        assert [p.name for p in manifest.parent.iterdir()] == ["run.jsonl"]

        if not Path("/sys/kernel").is_dir():
            return
        refused = await run_main(*args, "--manifest", "/sys/kernel/run.jsonl")
        assert emulator.stats.requests == 1
    assert refused.returncode == 2
    assert "cannot create the lock file /sys/kernel/run.jsonl.lock beside the manifest" in (
        refused.stderr
    )
    assert "[Errno" not in refused.stderr


def test_a_fresh_run_refuses_to_start_over_records_it_could_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where such records are kept
    manifest = tmp_path / "run.jsonl"
    kept = fallback_path(manifest)
    kept.write_text('{"source": "/a.png", "status": "upscaled"}\n')
    image = save_image(tmp_path / "a.png", (8, 6))
    args = ["upscale", str(image), "-o", str(tmp_path / "out"), "--manifest", str(manifest)]
    assert main([*args, "--base-url", "http://127.0.0.1:9"]) == 2
    assert f"{kept} holds records that an earlier run could not write" in capsys.readouterr().err
    assert kept.exists()
    assert not (tmp_path / "out").exists()


# -- lines, as written and read back ------------------------------------------------------


def test_text_shows_bytes_that_are_not_utf8_as_replacement_characters() -> None:
    assert text("café.png") == "café.png"
    assert text(os.fsdecode(b"caf\xe9.png")) == "caf\ufffd.png"
    assert text("a\ud800b") == "a?b"  # a lone surrogate no file name made


def test_settings_record_the_upscaler_and_fill_in_the_services_defaults() -> None:
    assert settings_of(UpscaleRequest(), official=False) == {
        "api": "v1",
        "flavor": "proxy",
        "num_images": 1,
    }
    assert settings_of(UpscaleRequest(prompt="x", num_images=2), official=True) == {
        "api": "v1",
        "flavor": "official",
        "prompt": "x",
        "num_images": 2,
    }
    assert settings_of(TopazBloom2(), official=True) == {
        "api": "v2",
        "model": "topaz-bloom-2",
        "upscale_factor": "x2",
    }
    assert settings_of(NanoBananaPro(private=True), official=True) == {
        "api": "v2",
        "model": "nano-banana-pro",
        "private": "true",
    }
    named = settings_of(UpscaleRequest(prompt=os.fsdecode(b"caf\xe9")), official=False)
    assert named["prompt"] == "caf\ufffd"


def test_a_line_holds_the_outcome_and_its_paths_losslessly(tmp_path: Path) -> None:
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    outputs = (tmp_path / "a.png", odd)
    outcome = Outcome(
        source=Source(odd, "café.png"),
        ok=False,
        urls=("https://img.example/1.png",),
        outputs=outputs,
        error="download failed: caf\udce9",
        attempts=3,
        seconds=1.23456,
        upscaled_at="2026-01-01T00:00:00+00:00",
    )
    assert outcome.status == "failed"
    assert attrs.evolve(outcome, error=None).status == "upscaled"
    assert attrs.evolve(outcome, ok=True).status == "ok"
    line = outcome.line({"api": "v1"})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    data = json.loads(line)
    assert list(data) == [
        "source",
        "source_bytes",
        "status",
        "settings",
        "urls",
        "upscaled_at",
        "outputs",
        "outputs_bytes",
        "error",
        "attempts",
        "seconds",
    ]
    assert data["source"] == text(os.fspath(odd))
    assert base64.b64decode(data["source_bytes"]) == os.fsencode(odd)
    assert data["outputs"] == [str(tmp_path / "a.png"), text(os.fspath(odd))]
    assert [base64.b64decode(raw) for raw in data["outputs_bytes"]] == list(
        map(os.fsencode, outputs)
    )
    assert data["error"] == "download failed: caf\ufffd"
    assert (data["status"], data["settings"], data["attempts"]) == ("failed", {"api": "v1"}, 3)
    assert data["seconds"] == 1.235
    assert data["urls"] == ["https://img.example/1.png"]
    assert data["upscaled_at"] == "2026-01-01T00:00:00+00:00"
    assert "é".encode() in Outcome(source=Source(Path("/é.png"), "é"), ok=True).line({})

    (record,) = parse_lines([line.decode("utf-8")])
    assert record.source == os.fspath(odd)
    assert record.outputs == tuple(map(os.fspath, outputs))
    assert (record.status, record.settings, record.attempts) == ("failed", {"api": "v1"}, 3)
    assert record.urls == ("https://img.example/1.png",)
    assert record.upscaled_at == "2026-01-01T00:00:00+00:00"
    assert record.line == line.decode("utf-8")

    plain = json.loads(
        attrs.evolve(outcome, source=Source(tmp_path / "b.png", "b"), outputs=(), error=None).line(
            {}
        )
    )
    assert "source_bytes" not in plain
    assert "outputs_bytes" not in plain
    assert plain["error"] is None


def test_reading_keeps_what_a_line_holds_and_ignores_what_it_holds_wrong() -> None:
    good = {"source": "/in/a.png", "status": "ok", "settings": {"api": "v1"}, "attempts": 2}
    wrong = {
        "source": "/in/b.png",
        "source_bytes": "not base64!",
        "status": None,
        "settings": ["api"],
        "urls": ["https://x/1.png", 7],
        "outputs": "/out/b.png",
        "attempts": "2",
        "upscaled_at": 5,
    }
    mismatched = {
        "source": "/in/c.png",
        "source_bytes": 12,
        "outputs": ["/out/c.png"],
        "outputs_bytes": ["L291dC9kLnBuZw==", "L291dC9lLnBuZw=="],
    }
    lines = [
        json.dumps(good) + "  \n",
        json.dumps(wrong),
        json.dumps(mismatched) + "\n",
        json.dumps({"source": 3}) + "\n",
        "[1, 2]\n",
        "\n",
    ]
    first, second, third = parse_lines(lines)
    assert first.line == json.dumps(good) + "\n"
    assert (first.source, first.status, first.settings, first.attempts) == (
        "/in/a.png",
        "ok",
        {"api": "v1"},
        2,
    )
    assert (first.urls, first.outputs, first.upscaled_at) == ((), (), None)
    assert second.source == "/in/b.png"
    assert (second.status, second.settings, second.attempts) == ("None", None, 0)
    assert (second.urls, second.outputs, second.upscaled_at) == (("https://x/1.png",), (), None)
    assert second.line == json.dumps(wrong) + "\n"
    assert (third.source, third.outputs) == ("/in/c.png", ("/out/c.png",))
    (kept,) = parse_lines([json.dumps({**mismatched, "outputs_bytes": ["L291dC9kLnBuZw==", 1]})])
    assert kept.outputs == ("/out/c.png",)
    (raw,) = parse_lines([json.dumps({**mismatched, "outputs_bytes": ["L291dC9kLnBuZw=="]})])
    assert raw.outputs == ("/out/d.png",)
    (loose,) = parse_lines(
        [json.dumps({"source": "/in/x.png", "source_bytes": "L291dC9k*LnBuZw=="})]
    )
    assert loose.source == "/in/x.png"  # not base64 as written: the text is kept


def test_a_torn_record_is_skipped_and_the_record_after_it_on_its_line_is_kept() -> None:
    whole = [json.dumps({"source": f"/in/{name}.png", "status": "ok"}) for name in "abc"]
    lines = [
        whole[0][:20] + whole[1] + "\n",  # torn, then the next record on the same line
        "x" + whole[2] + "\n",  # one stray character before a record
        whole[0][:1] + whole[0][:25] + "\n",  # torn twice over: nothing whole
        '{"source": ' + "\n",
    ]
    assert [record.source for record in parse_lines(lines)] == ["/in/b.png", "/in/c.png"]
    assert next(parse_lines(lines)).line == whole[1] + "\n"


# -- what --resume does with each record ---------------------------------------------------


def test_resume_sorts_each_input_by_its_last_record(tmp_path: Path) -> None:
    settings = {"api": "v1", "flavor": "proxy", "num_images": 1}
    saved = tmp_path / "saved.png"
    saved.write_bytes(b"x")
    names = ["new", "other", "done", "gone", "gone-paid", "paid", "failed", "failed-paid", "empty"]
    sources = [Source(tmp_path / f"{name}.png", f"{name}.png") for name in names]

    def record(status: str, urls: tuple[str, ...] = (), outputs: tuple[str, ...] = ()) -> Record:
        return Record(
            source="",
            status=status,
            settings=settings,
            urls=urls,
            outputs=outputs,
            attempts=2,
            upscaled_at="2026-01-01T00:00:00+00:00",
            line="",
        )

    url = ("https://img.example/1.png",)
    records = {
        "other": attrs.evolve(record("ok", outputs=(str(saved),)), settings={"api": "v2"}),
        "done": record("ok", url, (str(saved),)),
        "gone": record("ok", outputs=(str(saved), str(tmp_path / "lost.png"))),
        "gone-paid": record("ok", url, (str(tmp_path / "lost.png"),)),
        "paid": record("upscaled", url),
        "failed": record("failed"),
        "failed-paid": record("failed", url),
        "empty": record("ok"),
    }
    plan = plan_resume(
        sources, {str(tmp_path / f"{k}.png"): v for k, v in records.items()}, settings
    )
    by_name = {source.path: name for source, name in zip(sources, names, strict=True)}
    assert [by_name[source.path] for source in plan.upscale] == [
        "new",
        "other",
        "gone",
        "failed",
        "empty",
    ]
    assert [by_name[item.source.path] for item in plan.download] == [
        "gone-paid",
        "paid",
        "failed-paid",
    ]
    assert plan.download[0] == Recorded(
        source=sources[4], urls=url, attempts=2, upscaled_at="2026-01-01T00:00:00+00:00"
    )
    assert plan.done == 1
    assert [by_name[source.path] for source in plan.missing] == ["gone", "gone-paid", "empty"]
    assert plan.changed == {"api v2 -> v1, flavor unset -> proxy, num_images unset -> 1": 1}


def test_resume_says_what_it_skips_redoes_and_downloads(tmp_path: Path) -> None:
    sources = [Source(tmp_path / f"{i}.png", f"in/{i}.png") for i in range(7)]
    recorded = [Recorded(source=s, urls=("u",), attempts=1, upscaled_at=None) for s in sources]
    changed = {"a 1 -> 2": 2, "b x -> y": 1, "none recorded": 1, "c unset -> 3": 1}
    plan = ResumePlan(upscale=[], download=recorded[:2], done=3, changed=changed, missing=sources)
    manifest = Path("run.jsonl")
    assert plan.messages(manifest, 12) == [
        "Skipping 3 of 12 image(s) that run.jsonl records as done.",
        "Redoing 5 image(s) that run.jsonl records as made with other settings than this "
        "run's (a 1 -> 2; b x -> y; none recorded; ...).",
        "7 image(s) recorded as done have lost their result: in/0.png, in/1.png, in/2.png, "
        "in/3.png, in/4.png and 2 more.",
        "Downloading the results of 2 image(s) already upscaled, from the URLs run.jsonl "
        "records (an expired URL is upscaled again).",
    ]
    few = ResumePlan(
        upscale=[],
        download=[],
        done=0,
        changed=dict(list(changed.items())[:3]),
        missing=sources[:5],
    )
    assert few.messages(manifest, 5) == [
        "Redoing 4 image(s) that run.jsonl records as made with other settings than this "
        "run's (a 1 -> 2; b x -> y; none recorded).",
        "5 image(s) recorded as done have lost their result: in/0.png, in/1.png, in/2.png, "
        "in/3.png, in/4.png.",
    ]
    assert (
        ResumePlan(upscale=[], download=[], done=0, changed={}, missing=[]).messages(manifest, 1)
        == []
    )


def test_differences_name_each_setting_that_changed() -> None:
    assert differences(None, {"api": "v1"}) == "none recorded"
    assert differences({"b": 1, "a": "x", "same": 0}, {"a": "y", "c": 2, "same": 0}) == (
        "a x -> y, b 1 -> unset, c unset -> 2"
    )


# -- saving what was paid for --------------------------------------------------------------


def test_a_write_refused_for_want_of_room_is_told_apart_through_its_causes() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert refusal(full) is full
    for number in (errno.EDQUOT, errno.EROFS, errno.EFBIG):
        assert refusal(OSError(number, "refused")) is not None
    assert refusal(OSError(errno.EACCES, "Permission denied")) is None
    assert refusal(None) is None
    wrapped = RuntimeError("download failed")
    wrapped.__cause__ = ValueError("in between")
    wrapped.__cause__.__context__ = full
    assert refusal(wrapped) is full
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped  # a cycle ends the search
    assert refusal(looped) is None
    assert refused_folder(Path("out"), full) == "cannot write into out (No space left on device)"
    assert refused_folder(Path("out"), OSError("bare")) == "cannot write into out (bare)"


def test_the_urls_paid_for_or_why_there_is_nothing_to_download() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)

    def answer(*images: UpscaledImage) -> UpscaleResponse:
        return UpscaleResponse(created=created, data=list(images))

    two = answer(UpscaledImage(url="https://x/1.png"), UpscaledImage(url="https://x/2.png"))
    assert paid_urls(two) == (("https://x/1.png", "https://x/2.png"), None)
    assert paid_urls(answer()) == ((), "the service answered with no images")
    assert paid_urls(answer(UpscaledImage(url="https://x/1.png"), UpscaledImage())) == (
        (),
        "the service answered with 1 image(s) without a URL",
    )
    withheld = V2UpscaleResponse(
        generation_id="g",
        data=[V2UpscaledImage(url="https://x/1.png"), V2UpscaledImage(is_image_safe=False)],
    )
    assert paid_urls(withheld) == (
        (),
        "1 image(s) withheld by the service's safety check (the upscale is billed)",
    )


async def test_saving_names_several_results_by_number_and_tells_an_expired_url(
    tmp_path: Path, png_bytes: bytes
) -> None:
    source = Source(tmp_path / "a.png", "a.png")
    out = tmp_path / "out"
    out.mkdir()
    fresh = utc_now()
    async with (
        Emulator(KEY) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        answer = await client.upscale(png_bytes, UpscaleRequest(num_images=2))
        good, other = (image.url for image in answer.data)
        assert good is not None
        assert other is not None

        async def saving(*urls: str) -> Saved:
            return await save(
                client,
                source,
                urls,
                out,
                describe=str,
                attempts=2,
                seconds=1.5,
                upscaled_at=fresh,
                resolutions=("16x12",),
            )

        saved = await saving(good, other)
        assert saved == Saved(saved.outcome)
        assert saved.outcome.outputs == (out / "a.upscaled-1.png", out / "a.upscaled-2.png")
        assert (saved.outcome.ok, saved.outcome.attempts) == (True, 2)
        assert 1.5 <= saved.outcome.seconds < 60  # the time before, and the download's
        assert saved.outcome.upscaled_at == fresh
        assert saved.outcome.resolutions == ("16x12",)
        assert saved.outcome.urls == (good, other)
        assert (await saving(good)).outcome.outputs == (out / "a.upscaled.png",)

        gone = emulator.base_url + "/images/gone.png"
        lost = await saving(good, gone)
        assert lost.expired
        assert lost.refused is None
        assert not lost.outcome.ok
        assert lost.outcome.urls == (good, gone)
        assert lost.outcome.error is not None
        assert lost.outcome.error.startswith("download failed: ")
        assert "404" in lost.outcome.error
        assert lost.outcome.outputs == (out / "a.upscaled-1.png",)


async def test_saving_tells_a_full_disk_and_a_failure_that_is_no_expiry(
    tmp_path: Path,
) -> None:
    source = Source(tmp_path / "a.png", "a.png")
    picture = noise(tmp_path / "big.png", 64, 1)
    out = tmp_path / "out"
    out.mkdir()
    async with (
        Emulator(KEY) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, retry=RetryPolicy.no_retries()
        ) as client,
    ):
        answer = await client.upscale(picture)
        (url,) = (image.url for image in answer.data if image.url)

        async def saving(*urls: str) -> Saved:
            return await save(
                client, source, urls, out, describe=str, attempts=1, seconds=0, upscaled_at=None
            )

        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the disk fills
        try:
            full = await saving(url, emulator.base_url + "/images/gone.png")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert full.refused is not None
        assert full.refused.errno == errno.EFBIG
        assert not full.expired  # the disk must get room first
        assert not full.outcome.ok

        refused = await saving("http://127.0.0.1:9/a.png")  # nothing listens there
        assert (refused.refused, refused.expired) == (None, False)
        assert refused.outcome.error is not None
        assert refused.outcome.error.startswith("download failed: ")


async def test_saving_a_result_upscaled_over_a_day_ago_that_the_host_refuses_says_expired(
    tmp_path: Path, png_bytes: bytes
) -> None:
    source = Source(tmp_path / "a.png", "a.png")
    day_old = (datetime.now(UTC) - timedelta(hours=25)).isoformat(timespec="seconds")
    refusing = FaultPlan(rate=1.0, choices=[Fault.status(403)])
    async with (
        Emulator(KEY, image_faults=refusing) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, retry=RetryPolicy.no_retries()
        ) as client,
    ):
        (url,) = (image.url for image in (await client.upscale(png_bytes)).data if image.url)
        for upscaled_at, expired in ((day_old, True), (utc_now(), False)):
            saved = await save(
                client,
                source,
                [url],
                tmp_path,
                describe=str,
                attempts=1,
                seconds=0,
                upscaled_at=upscaled_at,
            )
            assert saved.expired is expired
            assert saved.outcome.upscaled_at == upscaled_at


def test_a_403_means_expired_only_once_a_day_has_passed() -> None:
    now = datetime.now(UTC)
    day_old = (now - timedelta(hours=24, minutes=1)).isoformat()
    young = (now - timedelta(hours=23, minutes=59)).isoformat()
    assert _expired(APIStatusError("gone", status=410), None)
    assert _expired(APIStatusError("missing", status=404), young)
    assert _expired(APIStatusError("forbidden", status=403), day_old)
    assert not _expired(APIStatusError("forbidden", status=403), young)
    assert not _expired(APIStatusError("forbidden", status=403), None)
    assert not _expired(APIStatusError("forbidden", status=403), "yesterday")
    assert not _expired(APIStatusError("broken", status=500), day_old)
    assert not _expired(ValueError("no status"), day_old)


# -- the manifest file ---------------------------------------------------------------------


def outcome_of(name: str, *, ok: bool = True) -> Outcome:
    return Outcome(source=Source(Path("/in") / name, name), ok=ok, urls=("https://x/" + name,))


def test_a_manifest_appends_whole_lines_and_keeps_each_inputs_last(tmp_path: Path) -> None:
    settings = {"api": "v1"}
    manifest = tmp_path / "deeper" / "still" / "run.jsonl"
    first = Manifest(manifest, append=False, settings=settings)
    first.write(outcome_of("a.png", ok=False))
    first.write(outcome_of("b.png"))
    assert first.written == 2
    first.close()
    assert first.problem() is None
    with manifest.open("ab") as file:
        file.write(b'{"source": "/in/torn')  # a killed run's last line
    inode = manifest.stat().st_ino

    second = Manifest(manifest, append=True, settings=settings)
    second.write(outcome_of("a.png"))
    second.close()
    lines = manifest.read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == ["/in/a.png", "/in/b.png"]
    assert [json.loads(line)["status"] for line in lines] == ["ok", "ok"]
    assert manifest.stat().st_ino != inode  # rewritten, one line per input
    assert [p.name for p in manifest.parent.iterdir()] == ["run.jsonl"]

    inode = manifest.stat().st_ino
    third = Manifest(manifest, append=True, settings=settings)
    third.write(outcome_of("c.png"))
    third.close()
    assert manifest.stat().st_ino == inode  # one line per input already: left as it is
    assert len(manifest.read_text().splitlines()) == 3

    Manifest(manifest, append=False, settings=settings).close()  # a fresh run starts over
    assert manifest.read_bytes() == b""  # kept: this run did not make it


def test_a_manifest_this_run_made_and_left_empty_is_removed(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    Manifest(manifest, append=True, settings={}).close()
    assert not manifest.exists()
    manifest.write_bytes(b"")
    Manifest(manifest, append=True, settings={}).close()
    assert manifest.exists()


def test_appending_to_a_manifest_ends_a_torn_line_first(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    manifest.write_bytes(b"torn")
    kept = Manifest(manifest, append=True, settings={})
    kept.write(outcome_of("a.png"))
    kept._file.close()  # as a killed run leaves it: not compacted
    assert manifest.read_bytes().startswith(b"torn\n{")
    manifest.write_bytes(b"")
    kept = Manifest(manifest, append=True, settings={})
    kept.write(outcome_of("a.png"))
    kept._file.close()
    assert manifest.read_bytes().startswith(b"{")


def test_a_manifest_that_cannot_be_opened_or_read_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError) as refused:
        Manifest(tmp_path / "file" / "run.jsonl", append=False, settings={})
    assert str(refused.value) == (
        f"cannot write the manifest {tmp_path / 'file' / 'run.jsonl'}: File exists"
    )
    with pytest.raises(UsageError) as refused:
        read_records(tmp_path)
    assert str(refused.value) == f"cannot read the manifest {tmp_path}: Is a directory"
    assert read_records(tmp_path / "none.jsonl") == {}
    (tmp_path / "odd.jsonl").write_bytes(b'{"source": "/in/caf\xe9.png"}\n')
    assert list(read_records(tmp_path / "odd.jsonl")) == ["/in/caf\ufffd.png"]


def test_taking_in_the_fallback_appends_its_lines_and_removes_it(tmp_path: Path) -> None:
    manifest = tmp_path / "records" / "today" / "run.jsonl"
    assert take_in_fallback(manifest, tmp_path) == 0
    assert not manifest.exists()
    kept = fallback_path(manifest, tmp_path)
    assert kept.parent == tmp_path
    # The name is fixed, so that a later version's --resume finds it too.
    assert re.fullmatch(r"ideogram-async-manifest-[0-9a-f]{16}\.jsonl", kept.name)
    assert fallback_path(tmp_path / "other.jsonl", tmp_path) != kept
    kept.write_bytes(b'{"source": "/in/a.png"}\n\n{"source": "/in/b.png"}')
    assert take_in_fallback(manifest, tmp_path) == 2
    assert not kept.exists()
    assert manifest.read_bytes() == b'{"source": "/in/a.png"}\n\n{"source": "/in/b.png"}\n'
    kept.write_bytes(b'{"source": "/in/c.png"}\n')
    assert take_in_fallback(manifest, tmp_path) == 1
    assert manifest.read_bytes().endswith(b'"/in/b.png"}\n{"source": "/in/c.png"}\n')

    kept.mkdir()
    with pytest.raises(UsageError) as refused:
        take_in_fallback(manifest, tmp_path)
    assert str(refused.value) == f"cannot read {kept}: Is a directory"
    kept.rmdir()
    kept.write_bytes(b'{"source": "/in/c.png"}\n')
    full = Path("/dev/full")
    if full.exists():
        manifest.unlink()
        manifest.symlink_to(full)
        with pytest.raises(UsageError) as refused:
            take_in_fallback(manifest, tmp_path)
        assert str(refused.value) == (
            f"cannot add the records saved in {kept} to the manifest {manifest} (No space "
            f"left on device); make room for it, then run again"
        )
        assert kept.exists()  # kept until the manifest holds its lines


def test_a_manifest_lock_is_held_by_one_run_and_removed_after(tmp_path: Path) -> None:
    manifest = tmp_path / "records" / "today" / "run.jsonl"
    lock = ManifestLock(manifest)
    assert lock.path == tmp_path / "records" / "today" / "run.jsonl.lock"
    with lock:
        assert lock.path.exists()
        with pytest.raises(UsageError) as refused, ManifestLock(manifest):
            pass
        assert str(refused.value) == (
            f"another run is using the manifest {manifest} (it holds {lock.path}); let it "
            f"finish, or give this run its own --manifest"
        )
        assert lock.path.exists()  # the refused run left the lock alone
    assert not lock.path.exists()
    with lock:  # free again, and taken again
        assert lock.path.exists()
        lock.path.unlink()  # someone removed it: leaving still works
    assert not lock.path.exists()


def test_a_file_system_that_refuses_locks_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    lock = ManifestLock(tmp_path / "run.jsonl")
    with pytest.raises(UsageError) as refused, lock:
        pass
    assert str(refused.value) == (
        f"cannot lock the manifest {tmp_path / 'run.jsonl'} (No locks available: the file "
        f"system of {lock.path} refuses locks); give --manifest a path on a local disk"
    )


def test_a_lock_file_removed_as_it_was_opened_is_taken_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "run.jsonl"
    lock = ManifestLock(manifest)
    flock = fcntl.flock
    calls: list[int] = []

    def after_the_holder_left(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the run that held it removes it, then lets it go
            lock.path.unlink()
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", after_the_holder_left)
    with lock:
        assert len(calls) == 2
        held = os.stat(lock.path)
        assert lock._file is not None
        assert os.fstat(lock._file.fileno()).st_ino == held.st_ino


def test_nothing_left_still_names_the_shared_allowance_and_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = Job(
        sources=[],
        request=UpscaleRequest(),
        out_dir=tmp_path,
        rerun_hint="",
        skipped=2,
        budget=LocalBudget("1.5"),
    )
    shared = SharedAt(host="127.0.0.1:6379/0", key="team")
    assert nothing_left(job, View(shared=shared, quiet=True)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Nothing left to do.",
        "Done: 0 of 2 image(s) upscaled, 2 skipped in 0.0s.",
        "Requests: 0 request(s) retried; none refused by the service; $0.0000 spent of the "
        "$1.5000 budget.",
        "Allowance: shared through Redis at 127.0.0.1:6379/0, key 'team'; the service never "
        "named the organization's allowance.",
    ]
    summary = tmp_path / "summary.json"
    assert nothing_left(attrs.evolve(job, budget=None), View(json=summary)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Summary: {summary}"
    assert json.loads(summary.read_text())["skipped"] == 2
    nothing_left(job, View(json=summary, quiet=True))
    assert "Summary:" not in capsys.readouterr().out


@pytest.fixture
def ascii_locale() -> Iterator[None]:
    """The C locale of a system without UTF-8: text files default to ASCII."""
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


@pytest.mark.usefixtures("ascii_locale")
def test_the_manifest_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    café = Outcome(source=Source(Path("/in/café.png"), "café.png"), ok=True)
    kept = Manifest(manifest, append=False, settings={"prompt": "crème"})
    kept.write(attrs.evolve(café, ok=False, urls=("https://x/1",)))
    kept.write(café)
    kept.close()  # compacted: read back and written again
    assert manifest.read_bytes() == café.line({"prompt": "crème"})
    assert list(read_records(manifest)) == ["/in/café.png"]


@pytest.mark.usefixtures("ascii_locale")
def test_the_key_file_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes("sk-clé\n".encode())
    assert read_key_file(str(key)) == "sk-clé"


def test_a_manifest_is_rewritten_through_a_hidden_copy_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "run.jsonl"
    kept = Manifest(manifest, append=False, settings={})
    kept.write(outcome_of("a.png", ok=False))
    kept.write(outcome_of("a.png"))
    seen: list[list[str]] = []
    fsync = os.fsync

    def listing_then_fsync(fd: int) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", listing_then_fsync)
    kept.close()
    ((copy, _),) = seen
    assert copy.startswith(".run.jsonl.")
    assert copy.endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl"]


def test_a_manifest_removed_during_the_run_ends_it_quietly(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    kept = Manifest(manifest, append=False, settings={})
    kept.write(outcome_of("a.png", ok=False))
    kept.write(outcome_of("a.png"))
    manifest.unlink()
    kept.close()  # nothing to compact; no error
    assert not manifest.exists()
