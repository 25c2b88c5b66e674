"""What the command line upscales and where results go: input discovery, output names.

Everything here runs before anything is sent, so a mistake on the command line costs
nothing: it is reported as a :class:`UsageError` (exit status 2).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import attrs

from ideogram_async.images import SUFFIXES

_MAX_LISTED = 5


class UsageError(Exception):
    """A problem with the command line or its files; exit status 2, nothing sent."""


@attrs.frozen
class Source:
    """One input image."""

    path: Path
    """Absolute and resolved: the key of the manifest, unique per file."""
    shown: str
    """The path as the user named it (or as found in a folder), for messages."""

    @property
    def stem(self) -> str:
        """The file name without its extension, as named (not as a symlink resolves)."""
        return Path(self.shown).stem


def find_images(args: Sequence[str], *, recursive: bool, exclude: Path | None) -> list[Source]:
    """Expand files, folders and glob patterns into unique images, in command-line order.

    A named file is taken as it is (the client rejects a non-image when it gets to
    it) unless it is no regular file; folders and patterns contribute their regular
    JPEG/PNG/WebP files, non-hidden, sorted, and their subfolders' too when
    ``recursive`` (FIFOs, devices, sockets and link loops are skipped). Patterns are
    expanded here so that they work when no shell did it. Files under ``exclude``
    (the resolved output folder) are skipped when found through a folder or a
    pattern, so a rerun never upscales results.
    """
    found: dict[Path, Source] = {}
    for arg in args:
        try:
            expanded = _expand(arg, recursive=recursive)
        except OSError as exc:  # an unreadable folder
            raise UsageError(f"{arg}: {exc.strerror or exc}") from None
        for shown, named in expanded:
            path = Path(shown).resolve()
            if named or exclude is None or not path.is_relative_to(exclude):
                found.setdefault(path, Source(path, shown))
    if not found:
        where = ", ".join(args)
        nested = not recursive and any(_has_subfolders(Path(arg)) for arg in args)
        hint = " (add --recursive to look in subfolders)" if nested else ""
        raise UsageError(f"no JPEG, PNG or WebP images found in: {where}{hint}")
    return list(found.values())


def _has_subfolders(path: Path) -> bool:
    return path.is_dir() and any(child.is_dir() for child in path.iterdir())


def _expand(arg: str, *, recursive: bool) -> list[tuple[str, bool]]:
    """The files ``arg`` stands for, each with whether it was named explicitly."""
    path = Path(arg)
    if path.is_dir():
        return [(str(p), False) for p in _folder_images(path, recursive)]
    if path.is_file():
        return [(arg, True)]
    if glob.escape(arg) == arg:
        if os.path.lexists(path):
            raise UsageError(f"{arg}: not a regular file (a FIFO, device, socket or link loop)")
        raise UsageError(f"{arg}: no such file or folder")
    fixed = Path(*itertools.takewhile(lambda part: glob.escape(part) == part, path.parts[:-1]))
    if not fixed.is_dir():  # "nothing/*.jpg": say so, rather than "no images found"
        raise UsageError(f"{arg}: no such folder {fixed}")
    files: list[tuple[str, bool]] = []
    for match in sorted(glob.glob(arg, recursive=recursive)):
        if Path(match).is_dir():
            files.extend(_expand(match, recursive=recursive))
        elif Path(match).is_file():  # not a FIFO, device, socket, dangling link or link loop
            files.append((match, False))
    return files


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in candidates
        if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def check_collisions(sources: Iterable[Source], out_dir: Path) -> None:
    """Refuse inputs whose results would overwrite each other (same stem, any case)."""
    first: dict[str, Source] = {}
    clashes: list[str] = []
    for source in sources:
        stem = source.stem
        other = first.setdefault(stem.casefold(), source)
        if other is not source:
            clashes.append(f"  {other.shown} and {source.shown} -> {out_dir / stem}.upscaled.*")
    if clashes:
        listed = "\n".join(clashes[:_MAX_LISTED])
        more = (
            f"\n  ... and {len(clashes) - _MAX_LISTED} more" if len(clashes) > _MAX_LISTED else ""
        )
        raise UsageError(
            f"inputs with the same name would overwrite each other's results:\n{listed}{more}\n"
            f"rename them, or upscale them in separate runs with different --out folders"
        )


def output_path(out_dir: Path, source: Source, url: str, number: int | None) -> Path:
    """``<stem>.upscaled.<ext>``, or ``<stem>.upscaled-<number>.<ext>`` for one of several.

    The extension comes from the URL's path when it is an image one; otherwise it is
    left off, and ``download`` adds the one of the image it receives.
    """
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    ext = suffix if suffix in SUFFIXES else ""
    tag = "upscaled" if number is None else f"upscaled-{number}"
    return out_dir / f"{source.stem}.{tag}{ext}"


def read_key_file(path: str) -> str:
    """The API key stored in ``path`` (surrounding whitespace removed)."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the API key file {path} is not UTF-8 text") from None
    if not key:
        raise UsageError(f"the API key file {path} is empty; put the key in it")
    return key


class MadeFolders:
    """The folders a run creates, removed again at its end if they are still empty, so
    that a run that wrote nothing leaves nothing behind."""

    def __init__(self) -> None:
        self._made: list[Path] = []

    def make(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents (``OSError`` if that fails)."""
        missing = list(
            itertools.takewhile(lambda path: not path.exists(), [folder, *folder.parents])
        )
        folder.mkdir(parents=True, exist_ok=True)
        self._made.extend(missing)

    def remove_empty(self) -> None:
        """Remove the folders made that are empty, deepest first."""
        for folder in sorted(self._made, reverse=True):  # a folder sorts after its parent
            with contextlib.suppress(OSError):  # not empty (or gone): keep it
                folder.rmdir()
        self._made.clear()
