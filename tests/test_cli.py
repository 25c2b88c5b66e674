"""The ``ideogram-async`` command end to end, against an in-process emulator.

Usage errors (exit 2) fail before anything is sent, so most of them run ``main()``
directly. A run to its end runs ``main()`` in-process too, in a thread with an event
loop of its own (:func:`run_main`), where leaked tasks, sessions and files fail the test
(warnings are errors). What needs a process of its own (a signal, a killed run, a
resource limit) runs ``python -m ideogram_async`` in a subprocess with ``-W default``,
so that leaks show up on its stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from rich.console import Console

from ideogram_async import IdeogramClient, LocalAllowance
from ideogram_async.cli import _demo as demo_module
from ideogram_async.cli import main
from ideogram_async.cli._demo import Sample, make_samples, run_demo, show_table
from ideogram_async.cli._demo import _rows as demo_rows
from ideogram_async.cli._demo_v2 import try_v2
from ideogram_async.cli._inputs import (
    MadeFolders,
    Source,
    UsageError,
    check_collisions,
    find_images,
    output_path,
    read_key_file,
)
from ideogram_async.cli._live import RichReporter
from ideogram_async.cli._manifest import Outcome
from ideogram_async.cli._pipeline import View, make_reporter
from ideogram_async.cli._progress import PlainReporter, SilentReporter, Tally
from ideogram_async.cli._refusals import WatchedAllowance
from ideogram_async.cli._summary import Failure, render
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries

KEY = "sk-cli-7e5t-s3cr3t-key"
"""Distinctive, so that a leak into any output is easy to spot."""
FINISHED = re.compile(rb"^\[\d+/\d+\] (ok|FAILED) ")
MANIFEST_FIELDS = {
    *("source", "status", "settings", "urls", "upscaled_at", "outputs", "error", "attempts"),
    "seconds",
}
BYTES_FIELDS = {"source_bytes", "outputs_bytes"}
DIRT = ("Traceback", "Task was destroyed", "Unclosed", "Warning", "Exception ignored")


@attrs.frozen
class Run:
    returncode: int
    stdout: str
    stderr: str


def save_image(path: Path, size: tuple[int, int], shade: int = 0) -> Path:
    """Write a solid image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade % 256, 90, 160)).save(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of five images in the three formats, of different sizes."""
    folder = tmp_path / "in"
    for index, name in enumerate(["a.png", "b.png", "c.png", "d.jpg", "e.webp"]):
        save_image(folder / name, (20 + 4 * index, 12 + 2 * index), shade=index * 40)
    return folder


def cli_env(*, key: str | None = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    if key is not None:
        env["IDEOGRAM_API_KEY"] = key
    return env


async def start_cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "default",
        "-m",
        "ideogram_async",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env() if env is None else env,
    )


async def finish(process: asyncio.subprocess.Process) -> Run:
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def run_cli(*args: str, env: dict[str, str] | None = None) -> Run:
    return await finish(await start_cli(*args, env=env))


async def run_main(*args: str, env: dict[str, str] | None = None) -> Run:
    """``main(args)`` run to its end in this process, like :func:`run_cli` runs the command.

    It runs in a thread, in an event loop of its own (the emulator keeps the test's), with
    ``env`` as its environment (the temporary folder included) and its output captured as
    a pipe shows it (:class:`Piped`).
    Being in-process, mutation testing sees which tests run which code; what needs a
    process of its own (a signal, a resource limit) uses :func:`start_cli`.
    """
    env = cli_env() if env is None else env
    out, err = Piped(), Piped(lines=True)

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(list(args))

    saved, saved_temp = dict(os.environ), tempfile.tempdir
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # found again from TMPDIR
    try:
        code = await asyncio.to_thread(call)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        tempfile.tempdir = saved_temp
    return Run(code, out.seen, err.seen)


class Piped(io.StringIO):
    """An output stream as the reader of a pipe sees it when the command ends.

    What is written reaches :attr:`seen` when flushed, as from stdout into a pipe (block
    buffered), or with ``lines`` at the end of each line, as from stderr (line buffered):
    a command that leaves a line unflushed shows it late, to a log or a script.
    """

    def __init__(self, *, lines: bool = False) -> None:
        super().__init__()
        self._lines = lines
        self.seen = ""

    def write(self, text: str) -> int:
        written = super().write(text)
        if self._lines and "\n" in text:
            self.flush()
        return written

    def flush(self) -> None:
        super().flush()
        self.seen = self.getvalue()


def assert_clean(run: Run) -> None:
    """Nothing leaked: no warnings or tracebacks, and the key appears nowhere."""
    for dirt in DIRT:
        assert dirt not in run.stderr, run.stderr
    assert KEY not in run.stdout + run.stderr


def read_manifest(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert KEY not in text
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:  # a path that is not UTF-8 adds its bytes (base64)
        assert MANIFEST_FIELDS <= set(record) <= MANIFEST_FIELDS | BYTES_FIELDS
    return records


def listing(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def all_files(paths: Sequence[str]) -> bool:
    return all(Path(p).is_absolute() and Path(p).is_file() for p in paths)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def upscale_args(emulator: Emulator, images: Sequence[str | Path], out: Path) -> list[str]:
    return ["upscale", *map(str, images), "--out", str(out), "--base-url", emulator.base_url]


async def test_upscale_writes_2x_results_and_a_manifest(inputs: Path, tmp_path: Path) -> None:
    out, manifest = tmp_path / "out", tmp_path / "records" / "run.jsonl"
    async with Emulator(KEY) as emulator:
        # The pattern is expanded by the command (no shell here) and overlaps the folder.
        args = upscale_args(emulator, [inputs / "*.png", inputs], out)
        run = await run_main(*args, "--manifest", str(manifest))
        stats = emulator.stats

    assert run.returncode == 0, run.stderr
    assert_clean(run)
    lines = [line for line in run.stdout.splitlines() if FINISHED.match(line.encode())]
    assert len(lines) == 5
    assert all(line.startswith(f"[{n}/5] ok ") for n, line in enumerate(lines, 1))
    assert "Done: 5 of 5" in run.stdout
    for source in listing(inputs):
        result = out / f"{source.stem}.upscaled.png"
        width, height = size_of(source)
        assert size_of(result) == (2 * width, 2 * height)
    assert [p.name for p in listing(out)] == [f"{stem}.upscaled.png" for stem in "abcde"]

    records = read_manifest(manifest)
    assert sorted(r["source"] for r in records) == [str(p.resolve()) for p in listing(inputs)]
    for record in records:
        assert record["status"] == "ok"
        assert record["error"] is None
        assert record["attempts"] == 1
        assert record["seconds"] > 0
        assert [Path(p).name for p in record["outputs"]] == [
            Path(record["source"]).stem + ".upscaled.png"
        ]
        assert all_files(record["outputs"])
        assert record["urls"][0].startswith(emulator.base_url + "/images/")

    assert stats.requests == 5
    assert {upload.route for upload in stats.uploads} == {"proxy"}
    assert {upload.headers["authorization"] for upload in stats.uploads} == {f"Bearer {KEY}"}
    assert stats.image_downloads == 5
    for headers in stats.image_requests:  # the key never goes to the image host
        assert "authorization" not in headers
        assert "api-key" not in headers


async def test_official_flavor_key_file_and_request_options(inputs: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    out = tmp_path / "out"
    options = ["--prompt", "crisp edges", "--resemblance", "60", "--detail", "70"]
    options += ["--magic-prompt", "off", "--seed", "7", "--num-images", "2"]
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [inputs / "d.jpg"], out)
        manifest = tmp_path / "run.jsonl"
        run = await run_main(
            *args,
            *("--official", "--api-key-file", str(key_file), "--manifest", str(manifest)),
            *options,
            env=cli_env(key=None),
        )
        stats = emulator.stats
        # Resumed with the same settings (the official flavor among them): nothing is sent.
        again = await run_main(
            *args,
            *("--official", "--api-key-file", str(key_file), "--manifest", str(manifest)),
            *[*options, "--resume"],
            env=cli_env(key=None),
        )
        assert emulator.stats.requests == stats.requests

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Skipping 1 of 1 image(s)"), again.stdout
    assert "Nothing left to do." in again.stdout
    assert run.returncode == 0, run.stderr
    assert_clean(run)
    (upload,) = stats.uploads
    assert upload.route == "official"
    assert upload.headers["api-key"] == KEY
    assert "authorization" not in upload.headers
    assert upload.fields == {
        "prompt": "crisp edges",
        "resemblance": 60,
        "detail": 70,
        "magic_prompt_option": "OFF",
        "seed": 7,
        "num_images": 2,
    }
    width, height = size_of(inputs / "d.jpg")
    results = listing(out)
    assert [p.name for p in results] == ["d.upscaled-1.png", "d.upscaled-2.png"]
    assert all(size_of(p) == (2 * width, 2 * height) for p in results)
    assert f"-> {out / 'd.upscaled-1.png'}, {out / 'd.upscaled-2.png'} (1 attempt," in run.stdout
    (record,) = read_manifest(manifest)
    assert record["settings"]["flavor"] == "official"


async def test_failed_images_are_reported_and_exit_1(inputs: Path, tmp_path: Path) -> None:
    (inputs / "notes.txt").write_text("not an image")
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    # The first request the service sees is rejected for good; the rest succeed.
    async with Emulator(KEY, faults=FaultPlan([Fault.status(400)])) as emulator:
        args = upscale_args(emulator, [inputs, inputs / "notes.txt"], out)
        run = await run_main(*args, "--manifest", str(manifest))

    assert run.returncode == 1, run.stderr
    assert_clean(run)
    assert run.stdout.count(" FAILED ") == 2
    assert "Done: 4 of 6 image(s) upscaled, 2 failed" in run.stdout
    records = {Path(r["source"]).name: r for r in read_manifest(manifest)}
    assert len(records) == 6
    notes = records.pop("notes.txt")
    assert notes["status"] == "failed"
    assert "not a JPEG, PNG or WebP image" in notes["error"]
    assert notes["attempts"] == 0
    assert notes["outputs"] == notes["urls"] == []
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["error"].startswith("HTTP 400")
    assert failed[0]["attempts"] == 1  # a 400 is never retried
    assert len(listing(out)) == 4

    # --resume tries the failures again: the rejected image now succeeds, the text
    # file fails again without being sent.
    async with Emulator(KEY) as emulator:
        args = upscale_args(emulator, [inputs, inputs / "notes.txt"], out)
        again = await run_main(*args, "--manifest", str(manifest), "--resume")
        assert emulator.stats.requests == 1
    assert again.returncode == 1, again.stderr
    assert "Skipping 4 of 6 image(s)" in again.stdout
    # One record per input, its last: the rejected image is now ok.
    records = {Path(r["source"]).name: r for r in read_manifest(manifest)}
    assert len(records) == 6
    assert [r["status"] for r in records.values()].count("failed") == 1
    assert len(listing(out)) == 5


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_interrupt_leaves_a_valid_manifest_and_resume_finishes_the_rest(
    signum: signal.Signals, tmp_path: Path
) -> None:
    folder, out, manifest = tmp_path / "in", tmp_path / "out", tmp_path / "run.jsonl"
    sources = [save_image(folder / f"img-{i:02d}.png", (8, 6), shade=i) for i in range(30)]
    keep = ["--manifest", str(manifest)]

    # Two at a time with latency, so items finish one by one while the test watches.
    async with Emulator(KEY, latency=0.1) as emulator:
        args = upscale_args(emulator, [folder], out)
        process = await start_cli(*args, *keep, "--concurrency", "2")
        assert process.stdout is not None
        seen: list[bytes] = []
        async with asyncio.timeout(20):
            while len(seen) < 5:
                line = await process.stdout.readline()
                assert line, "the run ended before it could be interrupted"
                if FINISHED.match(line):
                    seen.append(line)
        process.send_signal(signum)
        first = await finish(process)
        sent = emulator.stats.requests

        assert first.returncode == 130, first.stderr
        assert_clean(first)
        assert "Interrupted:" in first.stdout
        assert "--resume" in first.stdout
        done = read_manifest(manifest)  # every line is whole JSON
        assert 5 <= len(done) < 30
        leftovers = [
            p.name for p in listing(out) if not re.fullmatch(r"img-\d\d\.upscaled\.png", p.name)
        ]
        assert leftovers == []  # no partial downloads or temp files
        for record in done:  # saved, or paid for and recorded with the URL to fetch
            assert record["status"] in ("ok", "upscaled"), record
            assert len(record["urls"]) == 1
            assert record["status"] == "upscaled" or all_files(record["outputs"])

        second = await run_main(*upscale_args(emulator, [folder], out), *keep, "--resume")
        assert second.returncode == 0, second.stderr
        assert_clean(second)
        finished = sum(record["status"] == "ok" for record in done)
        assert f"Skipping {finished} of 30 image(s)" in second.stdout
        # Exactly the inputs without a recorded result were sent again.
        assert emulator.stats.requests - sent == 30 - len(done)
        records = read_manifest(manifest)
        assert sorted(r["source"] for r in records) == sorted(str(p.resolve()) for p in sources)
        assert all(record["status"] == "ok" for record in records)
        assert len(listing(out)) == 30

        sent = emulator.stats.requests
        third = await run_main(*upscale_args(emulator, [folder], out), *keep, "--resume")
        assert emulator.stats.requests == sent
    assert third.returncode == 0
    assert "Nothing left to do." in third.stdout


async def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = await run_main("demo", "--out", str(out), "--count", "6", env=cli_env(key=None))

    assert run.returncode == 0, run.stderr
    assert_clean(run)
    assert "Upscaled by the emulator" in run.stdout
    inputs = listing(out / "inputs")
    assert {p.suffix for p in inputs} == {".png", ".jpg", ".webp"}
    assert len(inputs) == 6
    for source in inputs:
        width, height = size_of(source)
        assert 128 <= width <= 256
        assert 128 <= height <= 256
        assert size_of(out / "upscaled" / f"{source.stem}.upscaled.png") == (2 * width, 2 * height)
    records = read_manifest(out / "manifest.jsonl")
    assert [r["status"] for r in records] == ["ok"] * 6
    assert re.search(r"v2 dry run: topaz-standard-2 at x4 would cost \$0\.\d{4} for 6", run.stdout)
    first = sorted(inputs)[0]
    width, height = size_of(first)
    assert size_of(out / "upscaled-v2" / f"{first.stem}.png") == (2 * width, 2 * height)


def demo_table(stdout: str) -> list[list[str]]:
    """The rows of the demo's table (as rich draws it on a pipe), each a list of its cells."""
    assert "Upscaled by the emulator" in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in row.strip("│").split("│")] for row in rows]


def finished_lines(stdout: str) -> dict[str, tuple[str, str]]:
    """Each plain progress line's file name: its attempts and seconds as shown there."""
    found = re.findall(
        r"^\[\d+/\d+\] (?:ok|FAILED) \S+/(\S+?)[: ].*\((\d+) attempts?, ([\d.]+)s\)$",
        stdout,
        re.MULTILINE,
    )
    return {name: (attempts, seconds) for name, attempts, seconds in found}


async def test_the_demo_table_shows_each_image_as_drawn_and_upscaled(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with instant_retries():
        run = await run_main(
            "demo", "-o", str(out), "--count", "5", "--fault-rate", "0.5", env=cli_env(key=None)
        )

    assert run.returncode == 0, run.stderr
    assert_clean(run)
    rows = demo_table(run.stdout)
    inputs = listing(out / "inputs")
    assert [row[0] for row in rows] == [path.name for path in inputs]
    progress = finished_lines(run.stdout)
    for (name, drawn, output, attempts, seconds), path in zip(rows, inputs, strict=True):
        width, height = size_of(path)
        assert drawn == f"{width}x{height}, {path.stat().st_size / 1024:.0f} KB"
        assert output == f"{2 * width}x{2 * height}"
        assert (attempts, seconds) == progress[name]
    assert any(int(row[3]) > 1 for row in rows)  # the injected faults were retried
    # The faults are seeded: the same ones every run, so the same retries.
    assert "Requests: 7 request(s) retried; none refused by the service." in run.stdout
    assert all(float(row[4]) >= 0.05 for row in rows)  # each emulated upscale takes 0.05 s or more
    first = inputs[0]
    width, height = size_of(first)
    assert (
        f"v2 run: topaz-bloom-2 upscaled {first.name} to {2 * width}x{2 * height} -> "
        f"{out / 'upscaled-v2' / first.stem}.png"
    ) in run.stdout.splitlines()
    assert run.stdout.splitlines()[-2:] == [
        f"Inputs: {out / 'inputs'}",
        f"With the real service: IDEOGRAM_API_KEY=... ideogram-async upscale {out / 'inputs'} "
        f"--out {out / 'upscaled'} --base-url URL (or --official)",
    ]


async def test_a_demo_whose_every_request_faults_shows_the_failures_and_exits_1(
    tmp_path: Path,
) -> None:
    out = tmp_path / "demo"
    with instant_retries():
        run = await run_main(
            "demo", "-o", str(out), "--count", "2", "--fault-rate", "1", env=cli_env(key=None)
        )

    assert run.returncode == 1, run.stderr
    assert_clean(run)
    rows = demo_table(run.stdout)
    assert [row[0] for row in rows] == ["sample-01.png", "sample-02.jpg"]
    assert [row[2] for row in rows] == ["failed", "failed"]
    assert [row[3] for row in rows] == ["10", "10"]  # every attempt the retry policy allows
    assert not (out / "upscaled").exists()
    (v2_line,) = [line for line in run.stdout.splitlines() if line.startswith("v2 ")]
    assert v2_line.startswith("v2 part failed: HTTP ")
    assert not (out / "upscaled-v2").exists()


def test_the_demo_table_lists_forty_images_by_name_then_counts_the_rest(tmp_path: Path) -> None:
    samples = [Sample(tmp_path / f"s-{n:02d}.png", 8, 6, 10753) for n in range(1, 42)]
    outcomes = [
        Outcome(
            source=Source(sample.path, str(sample.path)),
            ok=True,
            resolutions=("16x12", None),  # a service may name no resolution
            attempts=2,
            seconds=0.125,
        )
        for sample in reversed(samples)
    ]

    rows = demo_rows(samples, outcomes)
    assert rows[:2] == [
        ("s-01.png", "8x6, 11 KB", "16x12, ?", "2", "0.12"),  # 10753 bytes: 10.5 KB
        ("s-02.png", "8x6, 11 KB", "16x12, ?", "2", "0.12"),
    ]
    assert [row[0] for row in rows[:40]] == [f"s-{n:02d}.png" for n in range(1, 41)]
    assert rows[40:] == [("... 1 more", "", "", "", "")]
    assert len(demo_rows(samples[:40], outcomes[1:])) == 40  # all forty: no "more" row


async def test_the_demo_keeps_its_calls_in_flight_within_the_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Emulator] = []
    peaks: list[int] = []  # the most upscale calls in flight before the v2 part

    class Watched(Emulator):
        async def start(self) -> None:
            started.append(self)
            await super().start()

    async def v2_part(*args: Any) -> list[str]:
        peaks.append(started[0].stats.peak_in_flight)
        return await try_v2(*args)

    monkeypatch.setattr(demo_module, "Emulator", Watched)
    monkeypatch.setattr(demo_module, "try_v2", v2_part)
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--count", "6", "--fault-rate", "0"]
    run = await run_main(*args, "--concurrency", "1", env=cli_env(key=None))

    assert run.returncode == 0, run.stderr
    assert peaks == [1]  # one at a time, though six were to do


async def test_an_interrupted_demo_shows_no_table_and_returns_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = asyncio.Event()
    stop.set()  # as if Ctrl-C came before the first call was sent
    status = await run_demo(
        tmp_path, count=2, concurrency=2, fault_rate=0.0, stop=stop, view=View(progress="none")
    )

    assert status == 130
    shown = capsys.readouterr().out
    assert re.search(r"^Interrupted: .* Run the demo again to start over\.$", shown, re.MULTILINE)
    assert "Upscaled by the emulator" not in shown
    assert "v2 " not in shown
    assert len(listing(tmp_path / "inputs")) == 2


async def test_the_demo_without_pillow_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    run = await run_main("demo", "-o", str(tmp_path / "demo"), env=cli_env(key=None))

    assert run.returncode == 2
    assert "pip install 'ideogram-async[emulator]'" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "demo" / "upscaled").exists()


def test_the_demo_draws_the_same_samples_every_run(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "made" / "inputs", 34)

    assert [(s.path.name, s.width, s.height) for s in samples[:6]] == [
        ("sample-01.png", 240, 160),
        ("sample-02.jpg", 176, 176),
        ("sample-03.webp", 176, 224),
        ("sample-04.png", 240, 208),
        ("sample-05.jpg", 240, 224),
        ("sample-06.webp", 144, 176),
    ]
    pixels = hashlib.sha256()
    for sample in samples:
        with Image.open(sample.path) as image:
            assert image.size == (sample.width, sample.height)
            assert (
                image.format == {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[sample.path.suffix]
            )
            pixels.update(image.tobytes())
        assert sample.size == sample.path.stat().st_size
    # What the seeded drawing makes, shape by shape: 34 samples, enough for every rotation
    # and the colours' whole range to show (a change of Pillow's drawing or codecs changes
    # it too: then check the samples by eye and pin the new digest).
    assert pixels.hexdigest()[:16] == "feab8be2a4e0173d"
    reference = io.BytesIO()
    Image.new("RGB", (8, 8)).save(reference, format="JPEG", quality=90)
    with Image.open(samples[1].path) as jpeg, Image.open(reference) as at_90:
        assert isinstance(jpeg, JpegImageFile)
        assert isinstance(at_90, JpegImageFile)
        assert jpeg.quantization == at_90.quantization  # saved at quality 90
    first = [sample.path.read_bytes() for sample in samples[:2]]
    again = make_samples(tmp_path / "made" / "inputs", 2)  # into the same folder: redrawn
    assert [sample.path.read_bytes() for sample in again] == first


async def test_serve_answers_until_terminated(tmp_path: Path) -> None:
    process = await start_cli("serve", "--port", "0", "--api-key", KEY)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            line = (await process.stdout.readline()).decode()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        image = save_image(tmp_path / "x.png", (10, 7))
        async with IdeogramClient(api_key=KEY, base_url=match.group()) as client:
            response = await client.upscale(image)
        assert response.data[0].resolution == "20x14"
    finally:
        process.terminate()
        run = await finish(process)
    assert run.returncode == 0
    # Clean, though not assert_clean: serve prints the (test) key it accepts, by design.
    assert not [dirt for dirt in DIRT if dirt in run.stderr], run.stderr


async def test_missing_key_exits_2_before_sending(inputs: Path, tmp_path: Path) -> None:
    run = await run_main(
        "upscale",
        str(inputs),
        "--out",
        str(tmp_path / "out"),
        "--base-url",
        "http://127.0.0.1:9",
        env=cli_env(key=None),
    )
    assert run.returncode == 2
    assert "no API key" in run.stderr
    assert "IDEOGRAM_API_KEY" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    monkeypatch.delenv("IDEOGRAM_BASE_URL", raising=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resemblance", "0"], "resemblance must be from 1 to 100"),
        (["--num-images", "9"], "num_images must be from 1 to 8"),
        (["--concurrency", "0"], "--concurrency: expected a whole number >= 1"),
        (["--magic-prompt", "sometimes"], "--magic-prompt: invalid choice"),
        (["--resume"], "--resume needs --manifest"),
    ],
)
@pytest.mark.usefixtures("env_key")
def test_bad_options_exit_2(
    extra: list[str], message: str, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["upscale", str(inputs), "-o", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("env_key")
def test_colliding_names_exit_2_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = save_image(tmp_path / "one" / "x.png", (4, 4))
    second = save_image(tmp_path / "two" / "X.jpg", (4, 4))
    out = tmp_path / "out"
    args = ["upscale", str(first), str(second), "-o", str(out), "--base-url", "http://127.0.0.1:9"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{first} and {second}" in err
    assert "overwrite" in err


@pytest.mark.usefixtures("env_key")
def test_input_and_setup_problems_exit_2(
    tmp_path: Path, inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["-o", str(tmp_path / "out")]
    url = ["--base-url", "http://127.0.0.1:9"]
    (tmp_path / "empty").mkdir()
    assert main(["upscale", str(tmp_path / "empty"), *out, *url]) == 2
    assert "no JPEG, PNG or WebP images found" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "nope.png"), *out, *url]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["upscale", str(inputs), *out]) == 2
    assert "--base-url" in capsys.readouterr().err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"source": "x", "status": "ok"}\n')
    assert main(["upscale", str(inputs), *out, *url, "--manifest", str(manifest)]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main(["upscale", str(inputs), *out, *url, "--api-key-file", str(tmp_path / "k")]) == 2
    assert "cannot read the API key file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_find_images_expands_folders_and_patterns(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", (2, 2))
    save_image(tmp_path / "B.JPG", (2, 2))
    save_image(tmp_path / ".hidden.png", (2, 2))
    save_image(tmp_path / "sub" / "c.webp", (2, 2))
    save_image(tmp_path / "out" / "a.upscaled.png", (2, 2))
    (tmp_path / "notes.txt").write_text("x")

    def names(args: list[str], recursive: bool = False) -> list[str]:
        found = find_images(args, recursive=recursive, exclude=(tmp_path / "out").resolve())
        return [source.path.name for source in found]

    assert names([str(tmp_path)]) == ["B.JPG", "a.png"]
    assert names([str(tmp_path)], recursive=True) == ["B.JPG", "a.png", "c.webp"]
    assert names([str(tmp_path / "*.png"), str(tmp_path / "a.png")]) == ["a.png"]
    assert names([str(tmp_path / "**" / "*.webp")], recursive=True) == ["c.webp"]
    assert names([str(tmp_path / "notes.txt")]) == ["notes.txt"]  # named files are taken as is


async def test_live_display_and_summary_show_counts_places_and_failures(tmp_path: Path) -> None:
    screen = io.StringIO()
    tally = Tally(total=3)
    reporter = RichReporter(
        tally, Console(file=screen, force_terminal=True, width=170, color_system=None)
    )
    reporter.start()
    tally.allowance = places = WatchedAllowance(LocalAllowance(8, adaptive=False))
    async with places.hold(6):
        await places.rejected(5)  # a 429 inflight_limit naming the organization's 5, 6 held
    async with places.hold(2):  # (a refused request's places come back)
        tally.in_flight, tally.downloading, tally.retries = 2, 1, 1
        reporter.changed()
        tally.in_flight, tally.downloading, tally.ok = 1, 0, 1
        reporter.finished(Outcome(source=Source(tmp_path / "a.png", "a.png"), ok=True))
        tally.in_flight, tally.failed = 0, 1
        bad = Source(tmp_path / "b.png", "b.png")
        tally.failures.append(Failure(source="b.png", error="HTTP 400: no"))
        reporter.finished(Outcome(source=bad, ok=False, error="HTTP 400: no"))
        reporter.close()  # drawn one last time: 2 of the 5 places in use
    for line in render(tally.summary()):
        reporter.note(line)
    shown = screen.getvalue()
    assert "FAILED" in shown
    assert "b.png: HTTP 400: no" in shown
    assert "2/3" in shown
    assert "1 failed" in shown
    assert "0 in flight  0 downloading" in shown
    assert "2/5 places" in shown
    assert "Done: 1 of 3 image(s) upscaled, 1 failed" in shown
    assert "1 refused by the service (429: 1 inflight_limit)" in shown
    assert "the service named an allowance of 5, the bound settled at 5 image(s)" in shown
    assert "Failed:\n  b.png: HTTP 400: no" in shown


@pytest.mark.parametrize(
    ("url", "number", "name"),
    [
        ("https://img.example/a/b.webp?exp=1", None, "photo.upscaled.webp"),
        ("https://img.example/api/images/direct/8YEpFzHuS", None, "photo.upscaled"),
        ("https://img.example/x.PNG", 2, "photo.upscaled-2.png"),
        ("https://img.example/render.php?id=7", None, "photo.upscaled"),
    ],
)
def test_output_names_take_the_urls_image_suffix_or_leave_it_to_download(
    tmp_path: Path, url: str, number: int | None, name: str
) -> None:
    source = Source(path=tmp_path / "photo.jpg", shown="photo.jpg")
    assert output_path(tmp_path, source, url, number) == tmp_path / name


@pytest.fixture
def without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import rich`` fail, as it does without the ``cli`` extra."""
    for name in list(sys.modules):
        if name == "rich" or name.startswith("rich.") or name == "ideogram_async.cli._live":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)


@pytest.mark.usefixtures("without_rich")
def test_without_rich_a_terminal_gets_plain_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally(total=1)
    reporter = make_reporter(tally, View(progress="rich"))
    assert isinstance(reporter, PlainReporter)
    tally.ok = 1
    reporter.finished(Outcome(source=Source(tmp_path / "a.png", "a.png"), ok=True, attempts=1))
    show_table("Title", ("file", "attempts"), [("a.png", "1"), ("long-name.png", "12")])
    assert capsys.readouterr().out.splitlines() == [
        "[1/1] ok a.png ->  (1 attempt, 0.00s)",
        "Title",
        "file           attempts",
        "a.png                 1",
        "long-name.png        12",
    ]


@pytest.mark.usefixtures("without_rich")
def test_without_rich_the_demo_table_leaves_no_trailing_blanks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    show_table(
        "Title", ("file", "output", "seconds"), [("a.png", "16x12", "0.10"), ("... 1 more", "", "")]
    )
    assert capsys.readouterr().out.splitlines() == [
        "Title",
        "file        output  seconds",
        "a.png        16x12     0.10",
        "... 1 more",
    ]


def test_progress_modes_choose_the_display() -> None:
    def chosen(**view: Any) -> type:
        return type(make_reporter(Tally(total=1), View(**view)))

    assert chosen(progress="rich") is RichReporter
    assert chosen(progress="plain") is PlainReporter
    assert chosen() is PlainReporter  # auto, and pytest's stdout is no terminal
    assert chosen(progress="none") is SilentReporter
    assert chosen(quiet=True) is SilentReporter
    live = make_reporter(Tally(total=7), View(progress="rich"))
    assert isinstance(live, RichReporter)
    assert str(next(live.status.lines(80))).startswith("0/7  0 ok  0 failed  0 in flight")


def test_on_a_terminal_auto_draws_the_live_display_and_plain_stays_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert type(make_reporter(Tally(total=1), View())) is RichReporter
    assert type(make_reporter(Tally(total=1), View(progress="plain"))) is PlainReporter


def test_the_key_file_is_read_stripped_and_refused_with_a_reason(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(f"  {KEY}\n")
    assert read_key_file(str(key)) == KEY
    key.write_bytes(b"caf\xe9")
    with pytest.raises(UsageError) as refused:
        read_key_file(str(key))
    assert str(refused.value) == f"the API key file {key} is not UTF-8 text"
    key.write_text(" \n")
    with pytest.raises(UsageError) as refused:
        read_key_file(str(key))
    assert str(refused.value) == f"the API key file {key} is empty; put the key in it"
    with pytest.raises(UsageError) as refused:
        read_key_file(str(tmp_path / "none"))
    assert str(refused.value) == (
        f"cannot read the API key file {tmp_path / 'none'}: No such file or directory"
    )


def test_find_images_keeps_the_first_naming_and_skips_what_is_no_image_file(
    tmp_path: Path,
) -> None:
    save_image(tmp_path / "in" / "a.png", (2, 2))
    (tmp_path / "in" / "dir.png").mkdir()  # a folder with an image's name
    save_image(tmp_path / "in" / "pick" / "b.png", (2, 2))
    save_image(tmp_path / "out" / "a.upscaled.png", (2, 2))
    os.mkfifo(tmp_path / "in" / "pipe.png")
    exclude = (tmp_path / "out").resolve()

    def found(*args: str, recursive: bool = False) -> list[tuple[str, str]]:
        sources = find_images(list(args), recursive=recursive, exclude=exclude)
        return [(source.path.name, source.shown) for source in sources]

    folder = str(tmp_path / "in")
    named = str(tmp_path / "in" / "a.png")
    assert found(named, folder) == [("a.png", named)]
    assert found(str(tmp_path / "in" / "*"), recursive=True) == [
        ("a.png", named),
        ("b.png", str(tmp_path / "in" / "pick" / "b.png")),
    ]
    result = str(tmp_path / "out" / "a.upscaled.png")
    assert found(result) == [("a.upscaled.png", result)]  # named: taken even from --out
    with pytest.raises(UsageError) as nothing:  # through a folder: skipped as a result
        found(str(tmp_path / "out"))
    assert str(nothing.value) == f"no JPEG, PNG or WebP images found in: {tmp_path / 'out'}"
    assert found(str(tmp_path / "out"), named) == [("a.png", named)]
    with pytest.raises(UsageError) as piped:
        found(str(tmp_path / "in" / "pipe.png"))
    assert str(piped.value) == (
        f"{tmp_path / 'in' / 'pipe.png'}: not a regular file (a FIFO, device, socket or link loop)"
    )
    with pytest.raises(UsageError) as both:
        found(str(tmp_path / "out"), str(tmp_path / "out" / "*.jpg"))
    assert str(both.value) == (
        f"no JPEG, PNG or WebP images found in: {tmp_path / 'out'}, {tmp_path / 'out' / '*.jpg'}"
    )
    save_image(tmp_path / "nest" / "sub" / "x.png", (2, 2))
    with pytest.raises(UsageError) as nested:
        found(str(tmp_path / "nest"))
    assert str(nested.value) == (
        f"no JPEG, PNG or WebP images found in: {tmp_path / 'nest'} "
        f"(add --recursive to look in subfolders)"
    )
    save_image(tmp_path / "in" / "pick" / "deeper" / "c.png", (2, 2))
    deep = str(tmp_path / "in" / "pick" / "deeper" / "c.png")
    assert found(str(tmp_path / "in" / "*"), recursive=True)[-1] == ("c.png", deep)
    assert found(str(tmp_path / "**" / "c.png"), recursive=True) == [("c.png", deep)]
    absent = tmp_path / "in" / "none" / "deeper"
    with pytest.raises(UsageError) as no_folder:
        found(str(absent / "*.png"))
    assert str(no_folder.value) == f"{absent / '*.png'}: no such folder {absent}"
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(UsageError, match=r"dangling\.png: not a regular file"):
        found(str(tmp_path / "dangling.png"))
    with pytest.raises(UsageError) as missing:
        found(str(tmp_path / "gone.png"))
    assert str(missing.value) == f"{tmp_path / 'gone.png'}: no such file or folder"


def test_colliding_names_are_listed_five_at_most(tmp_path: Path) -> None:
    sources = [Source(tmp_path / str(i) / "x.png", f"{i}/x.png") for i in range(8)]
    with pytest.raises(UsageError) as clash:
        check_collisions(sources, tmp_path / "out")
    listed = "\n".join(
        f"  0/x.png and {i}/x.png -> {tmp_path / 'out' / 'x'}.upscaled.*" for i in range(1, 6)
    )
    assert str(clash.value) == (
        f"inputs with the same name would overwrite each other's results:\n{listed}\n"
        f"  ... and 2 more\n"
        f"rename them, or upscale them in separate runs with different --out folders"
    )
    with pytest.raises(UsageError) as clash:
        check_collisions(sources[:6], tmp_path / "out")
    assert "more" not in str(clash.value)
    check_collisions([sources[0], Source(tmp_path / "y.png", "y.png")], tmp_path / "out")


def test_folders_a_run_made_are_removed_when_empty_deepest_first(tmp_path: Path) -> None:
    made = MadeFolders()
    made.make(tmp_path / "a" / "b" / "c")
    made.make(tmp_path / "a" / "d")
    made.make(tmp_path)  # already there: never removed
    (tmp_path / "a" / "d" / "kept.txt").write_text("x")
    made.remove_empty()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a",
        "a/d",
        "a/d/kept.txt",
    ]
    (tmp_path / "a" / "d" / "kept.txt").unlink()
    made.remove_empty()  # forgotten once removed
    assert (tmp_path / "a" / "d").exists()
