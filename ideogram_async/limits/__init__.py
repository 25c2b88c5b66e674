"""The limits: how many places (images) the client may have in flight at once.

- :mod:`~ideogram_async.limits.bound`: the adaptive bound, a pure state machine (the
  rules: start, slow start, learning the organization's number, probe-and-hold, the
  backoff when others hold the places, forgetting);
- :class:`LocalAllowance`: the allowance of one process, driving that machine;
- :class:`RedisAllowance`: one allowance shared through Redis by every process of an
  organization, the same rules in Lua (imported on first use: it needs the ``redis``
  extra);
- :mod:`~ideogram_async.limits.budget`: the spend budget (:class:`Budget`,
  :class:`LocalBudget`), reserved before each v2 upscale; :class:`RedisBudget` shares
  one through Redis (imported on first use, like :class:`RedisAllowance`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .allowance import Allowance, AllowanceWrapper, OrganizationBound, Refusals
from .bound import DEFAULT_ALLOWANCE, AllowanceChange, Bound, ChangeReason
from .budget import Budget, LocalBudget
from .local import LocalAllowance

if TYPE_CHECKING:
    from .location import RedisLocation, organization_key
    from .shared import RedisAllowance
    from .shared_budget import RedisBudget

__all__ = [
    "DEFAULT_ALLOWANCE",
    "Allowance",
    "AllowanceChange",
    "AllowanceWrapper",
    "Bound",
    "Budget",
    "ChangeReason",
    "LocalAllowance",
    "LocalBudget",
    "OrganizationBound",
    "RedisAllowance",
    "RedisBudget",
    "RedisLocation",
    "Refusals",
    "organization_key",
]


def __getattr__(name: str) -> object:
    """Import the Redis parts on first use, so that the library does not need redis."""
    if name == "RedisAllowance":
        from .shared import RedisAllowance

        return RedisAllowance
    if name == "RedisBudget":
        from .shared_budget import RedisBudget

        return RedisBudget
    if name == "organization_key":
        from .location import organization_key

        return organization_key
    if name == "RedisLocation":
        from .location import RedisLocation

        return RedisLocation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
