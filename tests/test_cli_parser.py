"""The command line's options as a user meets them: ``--help``, parsed values, usage errors.

Everything runs in this process (``main`` or the parser itself), nothing is sent. Each
command's ``--help`` is compared whole with a file in ``tests/cli_help/``; after changing
an option or its help on purpose, write those files again with
``python -m tests.test_cli_parser`` and review the diff.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ideogram_async import __version__
from ideogram_async.cli import main
from ideogram_async.cli._parser import build_parser

GOLDEN = Path(__file__).with_name("cli_help")
COMMANDS = ["", "upscale", "enqueue", "status", "demo"]
COLUMNS = 80  # the terminal width the help files were written at

_OPTION = re.compile(r"^  (-\S.*?)(?:  +(\S.*))?$")


def alike(help_text: str) -> str:
    """``help_text`` with each option's entry written as Python 3.13 and later write it.

    Before 3.13 argparse repeats the value's name after each spelling
    (``-o DIR, --out DIR``); since, it names it once (``-o, --out DIR``), and the help
    column keeps its place either way.
    """
    lines = []
    for line in help_text.splitlines():
        entry = _OPTION.match(line)
        if entry is None:
            lines.append(line)
            continue
        spellings = entry[1].split(", ")
        value = spellings[-1].partition(" ")[2]
        names = ", ".join(spelling.partition(" ")[0] for spelling in spellings)
        invocation = f"  {names} {value}".rstrip()
        lines.append(invocation if entry[2] is None else f"{invocation:<24}{entry[2]}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal of :data:`COLUMNS` columns, without colour."""
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def golden(command: str) -> Path:
    return GOLDEN / f"{command or 'ideogram-async'}.txt"


def help_argv(command: str) -> list[str]:
    return [command, "--help"] if command else ["--help"]


@pytest.mark.usefixtures("terminal")
@pytest.mark.parametrize("command", COMMANDS)
def test_the_help_of_each_command_is_the_one_kept_in_tests(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(help_argv(command)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert alike(out) == golden(command).read_text(encoding="utf-8")


def test_alike_writes_an_options_value_once_and_keeps_the_help_column() -> None:
    before = (
        "  -h, --help            show this help message and exit\n"
        "  -o DIR, --out DIR     folder to work in\n"
        "  --allowance N, --concurrency N\n"
        "                        images in flight\n"
        "  IMAGE                 image files\n"
    )
    assert alike(before) == (
        "  -h, --help            show this help message and exit\n"
        "  -o, --out DIR         folder to work in\n"
        "  --allowance, --concurrency N\n"
        "                        images in flight\n"
        "  IMAGE                 image files\n"
    )
    assert alike(alike(before)) == alike(before)


def test_version_prints_the_command_and_the_packages_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ideogram-async {__version__}\n"


# -- what each option parses to ------------------------------------------------------------

UPSCALE_DEFAULTS: dict[str, Any] = {
    "name": "upscale",
    "images": ["a.png"],
    "out": None,
    "recursive": False,
    "prompt": None,
    "resemblance": None,
    "detail": None,
    "magic_prompt": None,
    "seed": None,
    "num_images": None,
    "model": None,
    "factor": None,
    "option": [],
    "dry_run": False,
    "max_usd": None,
    "base_url": None,
    "official": False,
    "api_key_file": None,
    "concurrency": 10,
    "shared_allowance": None,
    "allowance_key": None,
    "lease": None,
    "retries": None,
    "metrics_port": None,
    "timeout": None,
    "deadline": None,
    "progress": "auto",
    "quiet": False,
    "verbose": False,
    "json": None,
    "manifest": None,
    "resume": False,
}

ENQUEUE_DEFAULTS: dict[str, Any] = {
    "name": "enqueue",
    "images": ["a.png"],
    "out": None,
    "recursive": False,
    "prompt": None,
    "resemblance": None,
    "detail": None,
    "magic_prompt": None,
    "seed": None,
    "num_images": None,
    "model": None,
    "factor": None,
    "option": [],
    "broker": None,
    "shared_allowance": None,
    "wait": False,
    "progress": "auto",
    "quiet": False,
    "json": None,
    "dry_run": False,  # never a dry run: the commands share the code that reads it
    "verbose": False,  # the attempts are made by the workers
}


def parsed(*argv: str) -> dict[str, Any]:
    args, rest = build_parser().parse_known_args(list(argv))
    assert rest == []
    return vars(args)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["upscale", "a.png"], UPSCALE_DEFAULTS),
        (["enqueue", "a.png"], ENQUEUE_DEFAULTS),
        (["status", "3f2a"], {"name": "status", "job": "3f2a", "broker": None,
                              "shared_allowance": None, "json": None}),
        (["demo"], {"name": "demo", "out": "ideogram-demo", "count": 24, "concurrency": 10,
                    "fault_rate": 0.1, "progress": "auto", "quiet": False, "verbose": False,
                    "json": None}),
    ],
)  # fmt: skip
def test_each_command_without_options_gets_its_defaults(
    argv: list[str], expected: dict[str, Any]
) -> None:
    got = parsed(*argv)
    assert got == expected
    assert {name: type(value) for name, value in got.items()} == {
        name: type(value) for name, value in expected.items()
    }  # False is not None, 10 is not "10"


def test_every_upscale_option_parses_to_its_value() -> None:
    got = parsed(
        "upscale", "a.png", "dir/",
        "-o", "big", "-r",
        "--prompt", "crisp", "--resemblance", "40", "--detail", "60",
        "--magic-prompt", "on", "--seed", "7", "--num-images", "3",
        "--model", "topaz-bloom-2", "--factor", "x4",
        "--option", "creativity=5", "--option", "face_enhancement=true",
        "--dry-run", "--max-usd", " $2.50 ",
        "--base-url", "http://proxy", "--official", "--api-key-file", "key.txt",
        "--concurrency", "3", "--shared-allowance", "redis://h:1/2",
        "--allowance-key", "org", "--lease", "0.1", "--retries", "0",
        "--metrics-port", "[::1]:9464", "--timeout", "2.5", "--deadline", "60",
        "--progress", "plain", "-q", "-v", "--json", "s.json",
        "--manifest", "m.jsonl", "--resume",
    )  # fmt: skip
    assert got == {
        "name": "upscale",
        "images": ["a.png", "dir/"],
        "out": "big",
        "recursive": True,
        "prompt": "crisp",
        "resemblance": 40,
        "detail": 60,
        "magic_prompt": "ON",
        "seed": 7,
        "num_images": 3,
        "model": "topaz-bloom-2",
        "factor": "x4",
        "option": ["creativity=5", "face_enhancement=true"],
        "dry_run": True,
        "max_usd": Decimal("2.50"),
        "base_url": "http://proxy",
        "official": True,
        "api_key_file": "key.txt",
        "concurrency": 3,
        "shared_allowance": "redis://h:1/2",
        "allowance_key": "org",
        "lease": 0.1,
        "retries": 0,
        "metrics_port": ("::1", 9464),
        "timeout": 2.5,
        "deadline": 60.0,
        "progress": "plain",
        "quiet": True,
        "verbose": True,
        "json": "s.json",
        "manifest": "m.jsonl",
        "resume": True,
    }


def test_the_long_spellings_and_allowance_parse_alike() -> None:
    short = parsed("upscale", "a.png", "-o", "big", "-r", "-q", "-v", "--allowance", "4")
    long = parsed(
        "upscale", "a.png", "--out", "big", "--recursive", "--quiet", "--verbose",
        "--concurrency", "4",
    )  # fmt: skip
    assert short == long
    assert (long["out"], long["recursive"], long["quiet"], long["verbose"]) == (
        "big",
        True,
        True,
        True,
    )
    assert long["concurrency"] == 4


def test_every_enqueue_status_and_demo_option_parses_to_its_value() -> None:
    assert parsed(
        "enqueue", "a.png", "-o", "big", "--recursive", "--prompt", "p", "--seed", "1",
        "--magic-prompt", "Auto", "--model", "topaz-standard-2", "--factor", "x8",
        "--option", "n=1", "--broker", "redis://b", "--shared-allowance", "redis://s",
        "--wait", "--progress", "none", "--quiet", "--json", "s.json",
    ) == ENQUEUE_DEFAULTS | {
        "out": "big", "recursive": True, "prompt": "p", "seed": 1, "magic_prompt": "AUTO",
        "model": "topaz-standard-2", "factor": "x8", "option": ["n=1"],
        "broker": "redis://b", "shared_allowance": "redis://s", "wait": True,
        "progress": "none", "quiet": True, "json": "s.json",
    }  # fmt: skip
    assert parsed(
        "status", "3f2a", "--broker", "redis://b", "--shared-allowance", "redis://s",
        "--json", "s.json",
    ) == {
        "name": "status", "job": "3f2a", "broker": "redis://b", "shared_allowance": "redis://s",
        "json": "s.json",
    }  # fmt: skip
    assert parsed(
        "demo", "--out", "d", "--count", "1", "--allowance", "2", "--fault-rate", "0",
        "--progress", "rich", "-q", "--verbose", "--json", "s.json",
    ) == {
        "name": "demo", "out": "d", "count": 1, "concurrency": 2, "fault_rate": 0.0,
        "progress": "rich", "quiet": True, "verbose": True, "json": "s.json",
    }  # fmt: skip


def test_serve_leaves_every_option_to_the_emulators_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, rest = build_parser().parse_known_args(["serve", "--port", "0", "--help"])
    assert vars(args) == {"name": "serve"}
    assert rest == ["--port", "0", "--help"]
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ideogram-async serve ")
    assert "--latency S|MIN,MAX" in out  # the emulator's own options
    assert "Run a local emulator of the Ideogram upscale service." in out


# -- usage errors: one line, exit 2 --------------------------------------------------------


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the parser prints on stderr for ``argv``, having exited 2 (argparse's
    usage error, which ``main`` returns) and printed nothing else.

    Only the parser runs: a value it took by mistake starts no command.
    """
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_known_args(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1
    return err.rstrip("\n")


def test_a_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error([], capsys) == (
        "ideogram-async: error: the following arguments are required: COMMAND "
        "(see ideogram-async --help)"
    )
    assert usage_error(["upscale"], capsys) == (
        "ideogram-async upscale: error: the following arguments are required: IMAGE "
        "(see ideogram-async upscale --help)"
    )
    assert usage_error(["status"], capsys) == (
        "ideogram-async status: error: the following arguments are required: ID "
        "(see ideogram-async status --help)"
    )


@pytest.mark.parametrize(
    ("command", "option", "value", "expected"),
    [
        ("demo", "--count", "0", "a whole number >= 1"),
        ("demo", "--count", "x", "a whole number >= 1"),
        ("demo", "--count", "1.5", "a whole number >= 1"),
        ("demo", "--allowance", "0", "a whole number >= 1"),
        ("upscale", "--concurrency", "", "a whole number >= 1"),
        ("upscale", "--retries", "-1", "a whole number >= 0"),
        ("upscale", "--retries", "many", "a whole number >= 0"),
        ("upscale", "--max-usd", "0", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--max-usd", "0.0000009", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--max-usd", "-3", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--max-usd", "five", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--max-usd", "$", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--max-usd", "Infinity", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--max-usd", "NaN", "US dollars > 0 such as 5 or 2.50"),
        ("upscale", "--timeout", "0.09", "seconds >= 0.1"),
        ("upscale", "--timeout", "nan", "seconds >= 0.1"),
        ("upscale", "--lease", "soon", "seconds >= 0.1"),
        ("upscale", "--deadline", "-1", "seconds >= 0.1"),
        ("upscale", "--metrics-port", "65536", "[HOST:]PORT with a port up to 65535"),
        ("upscale", "--metrics-port", "localhost:", "[HOST:]PORT with a port up to 65535"),
        ("upscale", "--metrics-port", "host:http", "[HOST:]PORT with a port up to 65535"),
        ("demo", "--fault-rate", "1.01", "a number from 0 to 1"),
        ("demo", "--fault-rate", "-0.1", "a number from 0 to 1"),
        ("demo", "--fault-rate", "often", "a number from 0 to 1"),
        ("demo", "--fault-rate", "nan", "a number from 0 to 1"),
    ],
)
def test_a_bad_value_is_refused_naming_the_option_what_it_expects_and_the_value(
    command: str, option: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    images = ["a.png"] if command == "upscale" else []
    named = "--allowance/--concurrency" if option in ("--allowance", "--concurrency") else option
    assert usage_error([command, *images, f"{option}={value}"], capsys) == (
        f"ideogram-async {command}: error: argument {named}: expected {expected}, "
        f"got {value!r} (see ideogram-async {command} --help)"
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--concurrency", "1", 1),
        ("--retries", "0", 0),
        ("--retries", "12", 12),
        ("--max-usd", "5", Decimal(5)),
        ("--max-usd", "$0.000001", Decimal("0.000001")),
        ("--max-usd", " 2.5\t", Decimal("2.5")),
        ("--timeout", "0.1", 0.1),
        ("--timeout", "1e3", 1000.0),
        ("--deadline", "30", 30.0),
        ("--metrics-port", "9464", ("127.0.0.1", 9464)),
        ("--metrics-port", ":0", ("127.0.0.1", 0)),
        ("--metrics-port", "0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("--metrics-port", "[::]:80", ("::", 80)),
        ("--metrics-port", "XENON:9464", ("XENON", 9464)),  # only the brackets are stripped
    ],
)
def test_a_value_at_or_inside_its_limits_is_taken(option: str, value: str, expected: Any) -> None:
    got = parsed("upscale", "a.png", f"{option}={value}")[option[2:].replace("-", "_")]
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("1", 1.0), ("0.25", 0.25)])
def test_a_fault_rate_from_0_to_1_is_taken(value: str, expected: float) -> None:
    assert parsed("demo", "--fault-rate", value)["fault_rate"] == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["upscale", "a.png", "--magic-prompt", "sometimes"],
         "argument --magic-prompt: invalid choice: 'SOMETIMES'"),
        (["upscale", "a.png", "--model", "topaz"], "argument --model: invalid choice: 'topaz'"),
        (["enqueue", "a.png", "--factor", "x16"], "argument --factor: invalid choice: 'x16'"),
        (["demo", "--progress", "fancy"], "argument --progress: invalid choice: 'fancy'"),
    ],
)  # fmt: skip
def test_a_value_outside_the_choices_is_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    error = usage_error(argv, capsys)
    assert error.startswith(f"ideogram-async {argv[0]}: error: {message}")
    assert error.endswith(f" (see ideogram-async {argv[0]} --help)")


def test_enqueue_has_no_verbose_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_known_args(["enqueue", "a.png", "-v"])[1] == ["-v"]
    assert main(["enqueue", "a.png", "-v"]) == 2  # what main makes of an option left over
    assert capsys.readouterr().err == "ideogram-async enqueue: error: unrecognized arguments: -v\n"


def test_main_returns_the_parsers_usage_error_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "x"]) == 2  # "x" is no number: no demo can start
    assert capsys.readouterr().err == (
        "ideogram-async demo: error: argument --count: expected a whole number >= 1, got 'x' "
        "(see ideogram-async demo --help)\n"
    )


def write_golden() -> None:
    """Write the help files the tests compare with (run ``python -m tests.test_cli_parser``)."""
    os.environ["COLUMNS"] = str(COLUMNS)
    os.environ["NO_COLOR"] = "1"
    os.environ.pop("FORCE_COLOR", None)
    GOLDEN.mkdir(exist_ok=True)
    for command in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(help_argv(command))
        golden(command).write_text(alike(out.getvalue()), encoding="utf-8")
        print(f"wrote {golden(command)}", file=sys.stderr)


if __name__ == "__main__":
    write_golden()
