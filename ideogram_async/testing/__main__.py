"""``python -m ideogram_async.testing``: run the emulator until Ctrl-C or SIGTERM."""

from ideogram_async.testing import serve_main

if __name__ == "__main__":
    raise SystemExit(serve_main())
