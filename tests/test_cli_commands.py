"""The glue of the subcommands (``ideogram_async.cli._commands``), run in-process.

Each test runs :func:`ideogram_async.cli.main` (through ``run_main`` where it sends
anything) against the emulator over a real socket, or a real ``redis-server``, and
checks what a user sees: the exit status, the lines printed, the files written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ideogram_async.cli import main

from .test_cli import save_image


def test_arguments_a_command_does_not_take_exit_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = save_image(tmp_path / "a.png", (4, 4))
    assert main(["upscale", str(image), "-o", str(tmp_path / "out"), "--bogus", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "ideogram-async upscale: error: unrecognized arguments: --bogus x\n"
    assert not (tmp_path / "out").exists()
