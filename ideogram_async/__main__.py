"""``python -m ideogram_async``: the ``ideogram-async`` command."""

from ideogram_async.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
