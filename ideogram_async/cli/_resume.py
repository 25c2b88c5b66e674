"""What ``--resume`` does with each input, from the manifest's records and this run's settings.

An input recorded with other settings than this run's (another model, factor, prompt,
option, or none recorded) is done again, and the run says how many. Otherwise: one
recorded as done whose results are still there is skipped; one whose upscale was paid
for (its result URLs recorded) but whose results were not saved, or are gone, is
downloaded again from those URLs, not upscaled (an expired URL is upscaled again
later); every other one is upscaled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from ._inputs import Source
from ._manifest import Record, Settings

__all__ = ["Recorded", "ResumePlan", "plan_resume"]

_LISTED = 5


@attrs.frozen(kw_only=True)
class Recorded:
    """An input whose upscale was paid for: its result URLs, to download instead of buying."""

    source: Source
    urls: tuple[str, ...]
    attempts: int
    upscaled_at: str | None


@attrs.frozen(kw_only=True)
class ResumePlan:
    """The inputs of a resumed run, sorted by what is left to do for each."""

    upscale: list[Source]
    download: list[Recorded]
    done: int
    """Inputs recorded as done with these settings, results still there: skipped."""
    changed: dict[str, int]
    """Inputs done again because they were recorded with other settings: how many per
    difference (e.g. ``upscale_factor x2 -> x4``)."""
    missing: list[Source]
    """Inputs recorded as done whose results are gone (downloaded or upscaled again)."""

    def messages(self, manifest: Path, total: int) -> list[str]:
        """What the run tells the user before it starts."""
        said = []
        if self.done:
            said.append(
                f"Skipping {self.done} of {total} image(s) that {manifest} records as done."
            )
        if self.changed:
            count = sum(self.changed.values())
            why = "; ".join(list(self.changed)[:3]) + ("; ..." if len(self.changed) > 3 else "")
            said.append(
                f"Redoing {count} image(s) that {manifest} records as made with other "
                f"settings than this run's ({why})."
            )
        if self.missing:
            shown = [source.shown for source in self.missing]
            listed = ", ".join(shown[:_LISTED])
            more = f" and {len(shown) - _LISTED} more" if len(shown) > _LISTED else ""
            said.append(
                f"{len(shown)} image(s) recorded as done have lost their result: {listed}{more}."
            )
        if self.download:
            said.append(
                f"Downloading the results of {len(self.download)} image(s) already upscaled, "
                f"from the URLs {manifest} records (an expired URL is upscaled again)."
            )
        return said


def differences(old: Settings | None, new: Settings) -> str:
    """How ``old`` settings differ from ``new``, as ``name old -> new`` items."""
    if old is None:
        return "none recorded"
    names = sorted(set(old) | set(new))
    return ", ".join(
        f"{name} {old.get(name, 'unset')} -> {new.get(name, 'unset')}"
        for name in names
        if old.get(name) != new.get(name)
    )


def _saved(record: Record) -> bool:
    return bool(record.outputs) and all(os.path.isfile(output) for output in record.outputs)


def plan_resume(
    sources: Sequence[Source], records: Mapping[str, Record], settings: Settings
) -> ResumePlan:
    """Sort ``sources`` by what is left to do, from ``records`` (the manifest's last
    record of each) and ``settings`` (this run's)."""
    upscale: list[Source] = []
    download: list[Recorded] = []
    changed: dict[str, int] = {}
    missing: list[Source] = []
    done = 0
    for source in sources:
        record = records.get(os.fspath(source.path))
        if record is None:
            upscale.append(source)
            continue
        if record.settings != settings:
            difference = differences(record.settings, settings)
            changed[difference] = changed.get(difference, 0) + 1
            upscale.append(source)
            continue
        if record.status == "ok":
            if _saved(record):
                done += 1
                continue
            missing.append(source)
        if record.urls:
            download.append(
                Recorded(
                    source=source,
                    urls=record.urls,
                    attempts=record.attempts,
                    upscaled_at=record.upscaled_at,
                )
            )
        else:
            upscale.append(source)
    return ResumePlan(
        upscale=upscale, download=download, done=done, changed=changed, missing=missing
    )
