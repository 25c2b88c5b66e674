"""The glue of the subcommands (``ideogram_async.cli._commands``), run in-process.

Each test runs :func:`ideogram_async.cli.main` (through ``run_main`` where it sends
anything) against the emulator over a real socket, or a real ``redis-server``, and
checks what a user sees: the exit status, the lines printed, the files written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ideogram_async.cli import main
from ideogram_async.cli._manifest_io import fallback_path
from ideogram_async.testing import Emulator, Fault, FaultPlan, RedisServer

from .test_cli import KEY, Piped, cli_env, listing, read_manifest, run_main, save_image


def test_arguments_a_command_does_not_take_exit_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = save_image(tmp_path / "a.png", (4, 4))
    assert main(["upscale", str(image), "-o", str(tmp_path / "out"), "--bogus", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "ideogram-async upscale: error: unrecognized arguments: --bogus x\n"
    assert not (tmp_path / "out").exists()


@pytest.fixture
def terminal_signals() -> Iterator[None]:
    """SIGINT and SIGTERM handled as in a command started from a shell (a test runner may
    have set them otherwise); restored after the test."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    saved_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)
        signal.signal(signal.SIGTERM, saved_term)


@pytest.mark.usefixtures("terminal_signals")
def test_ctrl_c_before_the_run_starts_exits_130_saying_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the command still reads its key (here from a pipe nobody writes to):
    no traceback, "Interrupted." and the status of an interrupted run."""
    image = save_image(tmp_path / "a.png", (4, 4))
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    main_thread = threading.get_ident()
    returned = threading.Event()

    def interrupt() -> None:
        with fifo.open("w"):  # returns once the pipe is opened to read it
            if not returned.is_set():  # the command is reading it
                signal.pthread_kill(main_thread, signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        code = main(
            ["upscale", str(image), "-o", str(tmp_path / "out"), "--api-key-file", str(fifo)]
        )
    finally:
        returned.set()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # frees the helper if still waiting
        helper.join()
    assert code == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Interrupted.\n")
    assert not (tmp_path / "out").exists()


async def test_enqueue_sends_the_job_and_status_finds_it_where_the_records_are(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    """The broker (``--broker``) and the records (``--shared-allowance``) in two databases:
    ``enqueue`` leaves the job in the broker and its records where it was told, so
    ``status`` finds it there, and only there. No worker runs: nothing is done yet."""
    folder = tmp_path / "in"
    for number in range(2):
        save_image(folder / f"{number}.png", (6, 4), shade=number)
    save_image(folder / "sub" / "2.png", (6, 4))  # found with --recursive
    out, summary = folder / "out", tmp_path / "status.json"
    save_image(out / "0.upscaled.png", (12, 8))  # an earlier result: never an input
    broker, records = own_redis_server.url, own_redis_server.url.replace("/0", "/3")
    run = await run_main(
        *["enqueue", str(folder), "-o", str(out), "--recursive"],
        *["--broker", broker, "--shared-allowance", records],
    )
    assert run.returncode == 0, run.stderr
    found = re.fullmatch(
        r"Enqueued 3 image\(s\) as job (\w+)\. Follow it with: ideogram-async status \1\n",
        run.stdout,
    )
    assert found, run.stdout
    job = found[1]
    assert listing(out) == [out / "0.upscaled.png"]
    queued = aioredis.Redis.from_url(broker)
    try:
        assert await queued.llen("celery") == 3  # one task an image, waiting for a worker
    finally:
        await queued.aclose()

    status = await run_main("status", job, "--shared-allowance", records, "--json", str(summary))
    assert status.returncode == 3, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"Job {job}: 0 of 3 image(s) finished, 3 not yet."
    assert lines[1].startswith("Done: 0 of 3 image(s) upscaled in ")
    written = json.loads(summary.read_text())
    assert (written["total"], written["succeeded"], written["failed"]) == (3, 0, 0)

    elsewhere = await run_main("status", job, "--broker", broker)  # records read from db 0
    assert elsewhere.returncode == 2
    assert f"no job {job!r} in Redis at {broker}" in elsewhere.stderr


@contextlib.contextmanager
def emulator_thread(**settings: Any) -> Iterator[tuple[Emulator, asyncio.AbstractEventLoop]]:
    """An emulator serving from a thread of its own, for a command run in the main
    thread (the only one where a command can take SIGINT and SIGTERM)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    emulator = Emulator(KEY, **settings)
    try:
        asyncio.run_coroutine_threadsafe(emulator.__aenter__(), loop).result()
        try:
            yield emulator, loop
        finally:
            loop.call_soon_threadsafe(emulator.resume)
            asyncio.run_coroutine_threadsafe(emulator.__aexit__(None, None, None), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.mark.usefixtures("terminal_signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_stops_it_and_the_handlers_are_given_back(
    signum: signal.Signals, tmp_path: Path
) -> None:
    """Run in the main thread, the command takes the signal itself: the run stops as
    interrupted (130, the manifest valid), and the signals' handlers are what they were.

    Its output goes through a pipe that a helper thread reads, as a user watches it: the
    signal once a call is held by the emulator, and the call let go once the command
    says it is stopping.
    """
    images = [save_image(tmp_path / "in" / f"{n}.png", (6, 4), shade=n) for n in range(3)]
    manifest = tmp_path / "run.jsonl"
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert handlers == (signal.default_int_handler, signal.SIG_DFL)
    main_thread = threading.get_ident()
    read_end, write_end = os.pipe()
    lines: list[str] = []
    with emulator_thread() as (emulator, loop):
        loop.call_soon_threadsafe(emulator.pause)
        held = asyncio.run_coroutine_threadsafe(emulator.wait_places(1), loop)

        def interrupt() -> None:
            try:
                held.result()
            except concurrent.futures.CancelledError:
                return  # the command ended before it sent anything
            signal.pthread_kill(main_thread, signum)
            with open(read_end, encoding="utf-8") as output:
                for line in output:
                    lines.append(line)
                    if line.startswith("Stopping: "):  # the call already sent is paid for
                        loop.call_soon_threadsafe(emulator.resume)

        helper = threading.Thread(target=interrupt)
        helper.start()
        try:
            with (
                open(write_end, "w", encoding="utf-8", buffering=1) as piped,
                contextlib.redirect_stdout(piped),
            ):
                code = main(
                    [
                        *["upscale", *map(str, images), "-o", str(tmp_path / "out")],
                        *["--base-url", emulator.base_url, "--manifest", str(manifest)],
                        *["--concurrency", "1"],
                    ]
                )
        finally:
            held.cancel()
            helper.join()
        sent = emulator.stats.requests
    assert code == 130
    out = "".join(lines)
    assert sent == 1, out  # nothing was sent after the signal
    assert "Interrupted: 0 of 3 finished (0 ok, 0 failed). 1 image(s) already upscaled" in out
    assert "Run the same command again with --resume to finish the rest.\n" in out
    assert [record["status"] for record in read_manifest(manifest)] == ["upscaled"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


UPSCALE = ["upscale", "{tmp}/in/a.png", "-o", "{tmp}/out", "--base-url", "http://127.0.0.1:9"]
V2 = ["--model", "topaz-standard-2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*UPSCALE, "--quiet", "--progress", "plain"],
            "--quiet shows no progress; leave out --progress plain",
        ),
        (
            [*UPSCALE, "--json", "{tmp}/adir"],
            "--json {tmp}/adir is a folder; name the file to write the summary to",
        ),
        (
            UPSCALE[:4],
            "no service URL: pass --base-url URL or set IDEOGRAM_BASE_URL "
            "(or pass --official to use api.ideogram.ai)",
        ),
        (
            [*UPSCALE, "--base-url", "ftp://x"],
            "base_url must start with http:// or https://, got 'ftp://x'",
        ),
        (
            [*UPSCALE, *V2, "--dry-run", "--json", "{tmp}/s.json"],
            "--json writes the summary of a run; --dry-run prints prices only",
        ),
        (
            ["upscale", "{tmp}/in/a.png", "--base-url", "http://127.0.0.1:9"],
            "--out DIR is required: the folder to save the results in",
        ),
        (
            [*UPSCALE, "--resume"],
            "--resume needs --manifest PATH, the record of what is already done",
        ),
        ([*UPSCALE, "-o", "{tmp}/afile"], "--out {tmp}/afile is a file; pass a folder"),
        (
            [*UPSCALE[:2], "{tmp}/other/A.png", *UPSCALE[2:]],
            "inputs with the same name would overwrite each other's results:\n"
            "  {tmp}/in/a.png and {tmp}/other/A.png -> {tmp}/out/A.upscaled.*\n"
            "rename them, or upscale them in separate runs with different --out folders",
        ),
        (
            [*UPSCALE, "--manifest", "{tmp}/done.jsonl"],
            "the manifest {tmp}/done.jsonl already exists; add --resume to skip the images "
            "it records as done, or remove it to start over",
        ),
        (
            [*UPSCALE, "--manifest", "{tmp}/afile/m.jsonl"],
            "cannot create {tmp}/afile for --manifest: File exists",
        ),
        (
            [*UPSCALE, "-o", "{tmp}/afile/out"],
            "cannot write results into --out {tmp}/afile/out: Not a directory",
        ),
        ([*UPSCALE, "--lease", "5"], "--lease applies to --shared-allowance REDIS_URL"),
        (
            [*UPSCALE, "--allowance-key", "k"],
            "--allowance-key applies to --shared-allowance REDIS_URL",
        ),
        (
            [*UPSCALE, "--shared-allowance", "http://x"],
            "--shared-allowance: the Redis URL cannot be read: it must look like "
            "redis://[[user]:password@]host[:port][/db], rediss://... or unix:///path "
            "(the password percent-encoded)",
        ),
        (
            [*UPSCALE, "--max-usd", "1"],
            "--max-usd limits what v2 upscales spend: add --model MODEL",
        ),
        (
            [*UPSCALE, *V2, "--max-usd", "1", "--dry-run"],
            "--dry-run spends nothing: drop --max-usd, or --dry-run to spend",
        ),
        (
            [*UPSCALE, *V2, "--max-usd", "1e12"],
            "--max-usd: max_usd must be at most $1,000,000,000, not Decimal('1E+12')",
        ),
        *[
            (
                [*UPSCALE, *v2_only],
                "--factor, --option and --dry-run are v2 settings: add --model MODEL",
            )
            for v2_only in (["--factor", "x4"], ["--option", "denoise=0.5"], ["--dry-run"])
        ],
        (
            [*UPSCALE, "--resemblance", "0"],
            "resemblance must be from 1 to 100, got 0; pass a value in range or leave it "
            "unset for the service default",
        ),
        (
            [*UPSCALE, *V2, "--detail", "5", "--num-images", "2"],
            "--detail, --num-images apply to the v1 upscaler, not to --model",
        ),
        (
            [*UPSCALE, *V2, "--resemblance", "5", "--magic-prompt", "ON"],
            "--resemblance, --magic-prompt apply to the v1 upscaler, not to --model",
        ),
        ([*UPSCALE, *V2, "--option", "denoise"], "--option takes NAME=VALUE, got 'denoise'"),
        ([*UPSCALE, *V2, "--option", " =0.5"], "--option takes NAME=VALUE, got ' =0.5'"),
        (
            [*UPSCALE, *V2, "--prompt", "crisp", "--option", " prompt=soft"],
            "prompt is given twice; give it once",
        ),
        (
            [*UPSCALE, *V2, "--option", "denoise=0.5", "--option", "denoise =0.6"],
            "denoise is given twice; give it once",
        ),
        (
            [*UPSCALE, *V2, "--seed", "3", "--option", "seed=4"],
            "seed is given twice; give it once",
        ),
        (
            [*UPSCALE, *V2, "--factor", "x4", "--option", "upscale_factor=x2"],
            "upscale_factor is given twice; give it once",
        ),
        (
            [*UPSCALE, *V2, "--option", "bogus=1"],
            "topaz-standard-2 has no option 'bogus'; its options are private, "
            "target_collection_id, denoise, sharpen, subject_detection, face_enhancement, "
            "face_enhancement_strength, face_enhancement_creativity, upscale_factor, "
            "fix_compression, strength",
        ),
    ],
)
def test_each_usage_error_exits_2_with_its_whole_message_before_anything_is_made(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(args, message, tmp_path, capsys)


@pytest.fixture(autouse=True)
def no_ideogram_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API key set, no other setting from the environment."""
    for name in os.environ:
        if name.startswith("IDEOGRAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)


def assert_usage_error(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``args`` (with ``{tmp}`` for ``tmp_path``) exit 2 with ``message``, and change no file."""
    save_image(tmp_path / "in" / "a.png", (4, 4))
    save_image(tmp_path / "other" / "A.png", (4, 4))  # its result would be a.png's
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "done.jsonl").write_text("\n")  # one byte is a manifest that exists
    before = sorted(tmp_path.rglob("*"))
    tmp = str(tmp_path)
    assert main([arg.replace("{tmp}", tmp) for arg in args]) == 2
    expected = f"ideogram-async {args[0]}: error: {message}\n".replace("{tmp}", tmp)
    assert capsys.readouterr() == ("", expected)
    assert sorted(tmp_path.rglob("*")) == before  # no folder made, nothing written


ENQUEUE = ["enqueue", "{tmp}/in/a.png", "-o", "{tmp}/out", "--broker", "redis://127.0.0.1:9/0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (ENQUEUE[:2], "--out DIR is required: the folder the workers save the results in"),
        (
            [*ENQUEUE, "--json", "{tmp}/s.json", "--quiet", "--progress", "none"],
            "--json, --quiet, --progress show(s) the wait for the job: add --wait",
        ),
        ([*ENQUEUE, "--progress", "plain"], "--progress show(s) the wait for the job: add --wait"),
        ([*ENQUEUE, "-o", "{tmp}/afile"], "--out {tmp}/afile is a file; pass a folder"),
        (
            [*ENQUEUE, "--wait", "--quiet", "--progress", "rich"],
            "--quiet shows no progress; leave out --progress rich",
        ),
        (
            [*ENQUEUE, "--option", "denoise=1"],
            "--factor, --option and --dry-run are v2 settings: add --model MODEL",
        ),
        (
            [*ENQUEUE[:2], "{tmp}/other/A.png", *ENQUEUE[2:]],
            "inputs with the same name would overwrite each other's results:\n"
            "  {tmp}/in/a.png and {tmp}/other/A.png -> {tmp}/out/A.upscaled.*\n"
            "rename them, or upscale them in separate runs with different --out folders",
        ),
        (
            [*ENQUEUE, *V2, "--num-images", "2"],
            "--num-images apply to the v1 upscaler, not to --model",
        ),
        (
            [*ENQUEUE, "-o", "{tmp}/afile/out"],
            "cannot write results into --out {tmp}/afile/out: Not a directory",
        ),
    ],
)
def test_each_usage_error_of_enqueue_exits_2_with_its_whole_message(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert_usage_error(args, message, tmp_path, capsys)


def test_records_an_earlier_run_could_not_write_are_taken_in_or_removed_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    fallback = fallback_path(tmp_path / "run.jsonl")
    fallback.write_text('{"source": "x", "status": "ok"}\n')
    assert_usage_error(
        [*UPSCALE, "--manifest", "{tmp}/run.jsonl"],
        f"{fallback} holds records that an earlier run could not write to the manifest "
        "{tmp}/run.jsonl; add --resume to take them in, or remove it to start over",
        tmp_path,
        capsys,
    )


def test_without_the_redis_package_a_shared_allowance_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "ideogram_async.limits.shared", raising=False)
    assert_usage_error(
        [*UPSCALE, "--shared-allowance", "redis://127.0.0.1:9/0"],
        "--shared-allowance needs the redis package: pip install 'ideogram-async[redis]'",
        tmp_path,
        capsys,
    )


@pytest.mark.parametrize("key", [None, "", " \t "])
def test_without_an_api_key_upscale_says_where_to_put_one(
    key: str | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if key is None:
        monkeypatch.delenv("IDEOGRAM_API_KEY")
    else:
        monkeypatch.setenv("IDEOGRAM_API_KEY", key)
    assert_usage_error(
        UPSCALE,
        "no API key: set the IDEOGRAM_API_KEY environment variable or pass --api-key-file PATH",
        tmp_path,
        capsys,
    )


async def test_the_service_url_comes_from_the_option_else_the_environment(tmp_path: Path) -> None:
    """IDEOGRAM_BASE_URL serves when --base-url is not given, and --base-url wins over it.
    A manifest file that exists but is empty (made by ``touch``) is a fresh start."""
    image = save_image(tmp_path / "a.png", (6, 4))
    manifest = tmp_path / "run.jsonl"
    manifest.touch()
    async with Emulator(KEY) as emulator:
        from_env = await run_main(
            *["upscale", str(image), "-o", str(tmp_path / "one"), "--manifest", str(manifest)],
            *["--quiet", "--progress", "none"],
            env={**cli_env(), "IDEOGRAM_BASE_URL": emulator.base_url},
        )
        assert from_env.returncode == 0, from_env.stderr
        assert from_env.stdout.startswith("Done: 1 of 1 image(s) upscaled in ")
        assert from_env.stderr == ""
        given = await run_main(
            *["upscale", str(image), "-o", str(tmp_path / "two"), "--base-url", emulator.base_url],
            env={**cli_env(), "IDEOGRAM_BASE_URL": "http://127.0.0.1:9"},
        )
        assert given.returncode == 0, given.stderr
        assert emulator.stats.responses_by_status[200] == 2
    assert [record["status"] for record in read_manifest(manifest)] == ["ok"]
    assert listing(tmp_path / "one") == [tmp_path / "one" / "a.upscaled.png"]
    assert listing(tmp_path / "two") == [tmp_path / "two" / "a.upscaled.png"]


async def test_names_that_are_not_utf8_are_printed_escaped_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output that must be UTF-8 (as captured here) shows such a name's odd byte as an
    escape, on stdout (progress) and stderr (an error) alike."""
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    assert main(["upscale", str(odd), "-o", str(tmp_path / "out"), "--base-url", "http://x"]) == 2
    assert "caf\\udce9.png: no such file or folder" in capsys.readouterr().err
    save_image(odd, (6, 4))
    async with Emulator(KEY) as emulator:
        args = ["upscale", str(odd), "-o", str(tmp_path / "out"), "--base-url", emulator.base_url]
        code = await asyncio.to_thread(main, [*args, "--progress", "plain"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ok " + str(tmp_path) + "/caf\\udce9.png -> " in captured.out


async def test_a_summary_that_cannot_be_written_ends_the_run_with_1_naming_the_error(
    tmp_path: Path,
) -> None:
    """The images are done and saved; the summary's folder refuses the file (as a full
    disk would): exit 1 with the system's error, after the run."""
    image = save_image(tmp_path / "a.png", (6, 4))
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *["upscale", str(image), "-o", str(tmp_path / "out"), "--base-url", emulator.base_url],
            *["--json", "/sys/kernel/summary.json"],
        )
    assert run.returncode == 1
    assert re.fullmatch(
        r"ideogram-async upscale: error: \[Errno 13\] Permission denied: "
        r"'/sys/kernel/\.summary\.json\.\w+\.tmp'\n",
        run.stderr,
    ), run.stderr
    assert listing(tmp_path / "out") == [tmp_path / "out" / "a.upscaled.png"]


def test_serve_takes_its_own_options_and_names_itself_in_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--generation-delay", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ideogram-async serve [-h]")
    assert err.endswith(
        "ideogram-async serve: error: argument --generation-delay: expected seconds >= 0, "
        "got '-1'\n"
    )


@pytest.mark.parametrize("recursive", [True, False])
async def test_a_dry_run_looks_in_subfolders_when_told_and_shows_its_attempts_with_v(
    recursive: bool, tmp_path: Path
) -> None:
    """With --recursive and -v, or neither: the subfolder's image and the attempt lines."""
    folder = tmp_path / "in"
    save_image(folder / "a.png", (6, 4))
    save_image(folder / "sub" / "b.png", (6, 4))
    plan = FaultPlan([Fault.status(503, retry_after=0)])  # the first quote, refused once
    async with Emulator(KEY, faults=plan) as emulator:
        run = await run_main(
            *["upscale", str(folder), "--base-url", emulator.base_url],
            *["--model", "topaz-standard-2", "--dry-run"],
            *(["--recursive", "-v"] if recursive else []),
        )
        quotes = emulator.stats.quotes
    assert run.returncode == 0, run.stderr
    priced = [line.split()[0] for line in run.stdout.splitlines() if line.startswith(str(folder))]
    expected = [folder / "a.png", folder / "sub" / "b.png"] if recursive else [folder / "a.png"]
    assert priced == [str(path) for path in expected]
    assert quotes == len(expected)
    if recursive:
        assert run.stderr.startswith("quote a.png: attempt 1 failed: HTTP 503: "), run.stderr
        assert run.stderr.count("\n") == 1  # -v: a line for the attempt that failed, only
    else:
        assert run.stderr == ""  # the retry happened, unshown


async def test_results_saved_inside_the_input_folder_are_never_taken_as_inputs(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "photos"
    save_image(folder / "a.png", (6, 4))
    save_image(folder / "sub" / "b.png", (6, 4))  # found with --recursive
    out = folder / "big"
    async with Emulator(KEY) as emulator:
        for _ in range(2):  # the second run finds the first one's results under photos/
            args = ["upscale", str(folder), "-o", str(out), "--base-url", emulator.base_url]
            run = await run_main(*args, "--recursive")
            assert run.returncode == 0, run.stderr
            assert "Done: 2 of 2 image(s) upscaled in " in run.stdout
        assert emulator.stats.requests == 4
    assert listing(out) == [out / "a.upscaled.png", out / "b.upscaled.png"]


async def test_a_run_the_budget_stops_says_how_to_finish_it(tmp_path: Path) -> None:
    """What to do next depends on the manifest: none (add one next time), a fresh one
    (rerun with --resume), or a resumed one (run the same command again)."""
    for number in range(5):
        save_image(tmp_path / "in" / f"{number}.png", (6, 4), shade=number)
    manifest = tmp_path / "run.jsonl"
    stopped = "Stopped: the --max-usd budget of $0.03 would be passed by an image priced up to "
    async with Emulator(KEY) as emulator:
        args = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
        args += ["--base-url", emulator.base_url, "--model", "topaz-bloom-2", "--max-usd", "0.03"]
        runs = [
            await run_main(*args, *extra)
            for extra in (
                [],
                ["--manifest", str(manifest)],
                ["--manifest", str(manifest), "--resume"],
            )
        ]
    assert [run.returncode for run in runs] == [1, 1, 1]
    assert [run.stderr.removeprefix(stopped).split(". ", 2)[-1] for run in runs] == [
        "Add --manifest PATH next time, so that --resume can skip finished images.\n",
        "Run the same command again with --resume to finish the rest.\n",
        "Run the same command again to finish the rest.\n",
    ]
    assert "Nothing more was sent: 2 of 3 image(s) upscaled, 1 not done." in runs[2].stderr


async def test_resume_downloads_what_was_paid_for_when_nothing_is_left_to_upscale(
    tmp_path: Path,
) -> None:
    image = save_image(tmp_path / "a.png", (6, 4))
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    refused_once = FaultPlan([Fault.status(500)])  # the first download of a result fails
    async with Emulator(KEY, image_faults=refused_once) as emulator:
        args = ["upscale", str(image), "-o", str(out), "--base-url", emulator.base_url]
        args += ["--manifest", str(manifest), "--retries", "0"]
        first = await run_main(*args)
        assert first.returncode == 1, first.stderr
        assert read_manifest(manifest)[0]["urls"]  # paid for: its result's URL is kept
        again = await run_main(*args, "--resume")
        assert emulator.stats.requests == 1  # downloaded, not upscaled again
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        f"Downloading the results of 1 image(s) already upscaled, from the URLs {manifest} "
    )
    assert listing(out) == [out / "a.upscaled.png"]
    assert [record["status"] for record in read_manifest(manifest)] == ["ok"]


class WithoutSignals(asyncio.DefaultEventLoopPolicy):
    """Event loops that cannot take signals, as on Windows (asyncio's base loop)."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return BaseSelectorEventLoop()


@pytest.mark.usefixtures("terminal_signals")
def test_a_loop_that_cannot_take_signals_still_runs_the_command(tmp_path: Path) -> None:
    image = save_image(tmp_path / "a.png", (6, 4))
    with emulator_thread() as (emulator, _):
        saved = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(WithoutSignals())
        try:
            code = main(
                [
                    "upscale",
                    str(image),
                    "-o",
                    str(tmp_path / "out"),
                    "--base-url",
                    emulator.base_url,
                ]
            )
        finally:
            asyncio.set_event_loop_policy(saved)
    assert code == 0
    assert listing(tmp_path / "out") == [tmp_path / "out" / "a.upscaled.png"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # left as it was


async def test_v2_takes_seed_and_options_whose_value_holds_an_equals_sign(tmp_path: Path) -> None:
    image = save_image(tmp_path / "a.png", (6, 4))
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *["upscale", str(image), "-o", str(tmp_path / "out"), "--base-url", emulator.base_url],
            *["--model", "topaz-bloom-2", "--seed", "7", "--option", "prompt=a=b"],
        )
        (upload,) = emulator.stats.v2_uploads
    assert run.returncode == 0, run.stderr
    assert upload.fields == {"seed": "7", "prompt": "a=b"}


async def test_resume_says_what_it_skips_before_it_sends_anything(tmp_path: Path) -> None:
    """The resume's notes reach a pipe at once, not when the run ends."""
    images = [save_image(tmp_path / "in" / f"{n}.png", (6, 4), shade=n) for n in range(2)]
    manifest = tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        args = ["-o", str(tmp_path / "out"), "--base-url", emulator.base_url]
        args += ["--manifest", str(manifest)]
        assert (await run_main("upscale", str(images[0]), *args)).returncode == 0
        out, err = Piped(), Piped()

        def resume() -> int:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return main(["upscale", *map(str, images), *args, "--resume"])

        emulator.pause()
        resumed = asyncio.create_task(asyncio.to_thread(resume))
        held = asyncio.create_task(emulator.wait_places(1))
        await asyncio.wait([resumed, held], return_when=asyncio.FIRST_COMPLETED)
        assert held.done(), out.getvalue() + err.getvalue()  # the second image is on its way, held
        seen = out.seen
        emulator.resume()
        assert await resumed == 0
    assert seen == f"Skipping 1 of 2 image(s) that {manifest} records as done.\n"


async def test_an_attempt_longer_than_timeout_fails_naming_the_option(tmp_path: Path) -> None:
    image = save_image(tmp_path / "a.png", (6, 4))
    async with Emulator(KEY) as emulator:
        emulator.pause()  # the service never answers
        run = await run_main(
            *["upscale", str(image), "-o", str(tmp_path / "out"), "--base-url", emulator.base_url],
            *["--timeout", "0.2", "--retries", "0", "--deadline", "5"],  # the deadline: a bound
        )
        emulator.resume()
    assert run.returncode == 1
    assert (
        "  "
        + str(image)
        + ": the request timed out after the image was sent, after 0.2s (--timeout); "
        "the service may be overloaded\n"
    ) in run.stdout


async def test_a_deadline_shorter_than_the_timeout_ends_the_call_first(tmp_path: Path) -> None:
    image = save_image(tmp_path / "a.png", (6, 4))
    async with Emulator(KEY) as emulator:
        emulator.pause()  # the service never answers
        run = await run_main(
            *["upscale", str(image), "-o", str(tmp_path / "out"), "--base-url", emulator.base_url],
            *["--deadline", "0.3", "--timeout", "3", "--retries", "0"],
        )
        emulator.resume()
    assert run.returncode == 1
    (failure,) = [line for line in run.stdout.splitlines() if line.startswith("  ")]
    assert "the deadline of 0.3s for the whole call passed after 1 attempt(s)" in failure
    assert "raise --deadline" in failure
