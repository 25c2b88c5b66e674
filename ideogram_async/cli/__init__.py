"""The ``ideogram-async`` command: ``upscale`` files at volume, a ``demo``, ``serve`` the emulator.

It uses only the public library and :mod:`ideogram_async.testing`. Exit status: 0 when
every image succeeded, 1 when some failed or the run was stopped (a refused key, a
service that cannot be reached), 2 for a usage error (nothing was sent), 130 when
interrupted by Ctrl-C or SIGTERM.
"""

from ._commands import main

__all__ = ["main"]
