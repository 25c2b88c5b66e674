"""The adaptive bound's rules, on the pure machine: events in, bound out, no clock of its own."""

from __future__ import annotations

import pytest

from ideogram_async.limits import DEFAULT_ALLOWANCE, AllowanceChange, Bound, ChangeReason
from ideogram_async.limits.bound import (
    BACKOFF_GROWTH,
    FIRST_BACKOFF,
    MAX_BACKOFF,
    MAX_PROBE_DOUBLINGS,
)


def full(bound: Bound, times: int = 1, now: float = 0.0) -> None:
    """``times`` requests ran that were granted with the whole bound in use."""
    for _ in range(times):
        limit = bound.limit
        bound.completed(level=limit, granted=limit, waiting=0, round=bound.round, now=now)


def refuse(
    bound: Bound,
    *,
    held: int,
    number: int | None = None,
    places: int = 1,
    now: float = 0.0,
    jitter: float = 0.0,
    stale: bool = False,
) -> AllowanceChange | None:
    round_ = bound.round - 1 if stale else bound.round
    return bound.rejected(
        number=number, held=held, places=places, round=round_, now=now, jitter=jitter
    )


def test_an_adaptive_bound_starts_at_the_default_allowance_a_fixed_one_at_the_maximum() -> None:
    assert DEFAULT_ALLOWANCE == 10
    assert (Bound(40).limit, Bound(4).limit, Bound(40, adaptive=False).limit) == (10, 4, 40)


def test_slow_start_grows_by_one_per_request_that_ran_at_full_use() -> None:
    bound = Bound(40)
    full(bound, 3)
    assert bound.limit == 13
    bound.completed(level=5, granted=10, waiting=0, round=0, now=0.0)  # below the bound: nothing
    assert bound.limit == 13


def test_slow_start_judges_full_use_by_the_bound_at_the_grant() -> None:
    bound = Bound(40)
    for _ in range(2):  # two requests that each filled the bound of 10 at their grant
        bound.completed(level=10, granted=10, waiting=0, round=0, now=0.0)
    assert bound.limit == 12  # both count, though the bound was 11 when the second ran
    bound.completed(level=9, granted=10, waiting=0, round=0, now=0.0)
    assert bound.limit == 12  # 9 of 10 at its grant, nothing waiting: not full
    bound.completed(level=9, granted=10, waiting=2, round=0, now=0.0)
    assert bound.limit == 13  # a waiter of 2 would not have fitted beside the 9


def test_probing_judges_full_use_by_the_bound_now() -> None:
    bound = Bound(40)
    refuse(bound, held=5)  # no success yet: unexplained, down to 4, the probing begins
    full(bound, 4)
    assert bound.limit == 5  # the probe
    for _ in range(10):  # requests that filled the bound of 4 say nothing about 5
        bound.completed(level=4, granted=4, waiting=0, round=bound.round, now=0.0)
    assert bound.limit == 5
    full(bound, 4)
    assert bound.limit == 5
    full(bound)
    assert bound.limit == 6


def test_a_number_over_what_is_held_is_learned_at_once_without_backoff() -> None:
    bound = Bound(40)
    full(bound, 5)
    change = refuse(bound, held=15, number=12)
    assert change == AllowanceChange(old=15, new=12, reason=ChangeReason.LEARNED)
    assert (bound.limit, bound.ceiling, bound.closed_for(0.0)) == (12, 12, 0.0)
    full(bound, 200)
    assert bound.limit == 12  # never above the number


def test_others_holding_the_places_lower_the_bound_to_what_is_held_and_back_off() -> None:
    bound = Bound(10)
    change = refuse(bound, held=4, number=10, jitter=1.0)
    assert change == AllowanceChange(old=10, new=3, reason=ChangeReason.HELD)
    assert bound.closed_for(0.0) == FIRST_BACKOFF  # jitter 1: the whole backoff
    refuse(bound, held=1, number=10, jitter=0.0, now=1.0)
    assert bound.backoff == 0.275  # grown by a tenth, in whole milliseconds
    assert bound.closed_for(1.0) == pytest.approx(0.1375)  # half of it (jitter 0)
    assert bound.limit == 1
    for step in range(2, 30):
        refuse(bound, held=1, number=10, jitter=1.0, now=step)
    assert bound.closed_for(29.0) == MAX_BACKOFF
    # a request went through: open, reset
    bound.completed(level=1, granted=1, waiting=0, round=bound.round, now=29.5)
    assert (bound.closed_for(29.5), bound.backoff) == (0.0, 0.0)
    refuse(bound, held=1, number=10, jitter=1.0, now=30.0)
    assert bound.closed_for(30.0) == FIRST_BACKOFF


def test_a_refusal_from_an_earlier_round_only_lowers_to_what_is_held() -> None:
    bound = Bound(10)
    refuse(bound, held=10, number=10, jitter=1.0)  # fresh: to 9, backoff 0.25
    assert bound.limit == 9
    for held in (9, 8, 7):  # the rest of the same burst: no doubling, no halving
        refuse(bound, held=held, number=10, jitter=1.0, stale=True)
    assert (bound.limit, bound.backoff, bound.streak) == (6, FIRST_BACKOFF, 1)


def test_probe_and_hold_after_the_first_refusal() -> None:
    bound = Bound(40)
    full(bound, 2)  # slow start: 12, and 11 went through
    refuse(bound, held=12)  # above what went through: a failed probe, back to 11
    assert (bound.limit, bound.closed_for(0.0)) == (11, 0.0)  # explained: no backoff
    full(bound, 21)
    assert bound.limit == 11  # after a failed probe, a run of 2 x 11 at full use
    full(bound)
    assert bound.limit == 12  # the probe


def test_places_a_failed_probe_asked_for_going_through_resume_the_slow_start() -> None:
    bound = Bound(40)
    full(bound, 2)  # slow start: 12, and 11 went through
    refuse(bound, held=12)  # a failed probe at 12: back to 11, probing
    full(bound, 22)  # the run of 2 x 11, then the probe: 12
    assert (bound.limit, bound.slow, bound.failed_at) == (12, False, 12)
    bound.completed(level=11, granted=12, waiting=1, round=bound.round, now=0.0)
    assert (bound.limit, bound.slow) == (12, False)  # 11 held: says nothing of 12
    change = bound.completed(level=12, granted=12, waiting=0, round=bound.round, now=0.0)
    assert change == AllowanceChange(old=12, new=13, reason=ChangeReason.INCREASED)
    assert (bound.slow, bound.failed_at, bound.failed) == (True, 0, 0)
    full(bound, 3)  # each request at full use adds one again, as at the start
    assert bound.limit == 16


def test_only_a_request_of_this_round_resumes_the_slow_start() -> None:
    bound = Bound(40)
    full(bound, 2)
    refuse(bound, held=12)  # failed probe: round 1, back to 11
    stale = bound.round - 1
    bound.completed(level=12, granted=12, waiting=0, round=stale, now=0.0)
    assert (bound.limit, bound.slow, bound.failed_at) == (11, False, 12)


def test_failed_probes_space_the_next_ones_up_to_a_limit() -> None:
    bound = Bound(40)
    refuse(bound, held=5, number=None)  # no success yet: unexplained, down to 4
    full(bound, 4)
    assert bound.limit == 5
    for doublings in range(1, MAX_PROBE_DOUBLINGS + 3):
        refuse(bound, held=5)
        assert bound.limit == 4
        needed = 4 << min(doublings, MAX_PROBE_DOUBLINGS)
        full(bound, needed - 1)
        assert bound.limit == 4
        full(bound)
        assert bound.limit == 5


def test_only_repeated_refusals_halve_the_bound() -> None:
    bound = Bound(20)
    full(bound, 10)  # slow start to 20, 20 went through
    assert bound.limit == 20
    refuse(bound, held=20)  # first: down to what is held
    assert bound.limit == 19
    change = refuse(bound, held=19)  # again, with no request through between: halve
    assert change == AllowanceChange(old=19, new=9, reason=ChangeReason.DECREASED)
    full(bound)
    refuse(bound, held=9)  # a request went through since: not a repeat
    assert bound.limit == 8


def test_a_fixed_bound_changes_only_by_the_number_but_still_backs_off() -> None:
    bound = Bound(6, adaptive=False)
    refuse(bound, held=3, number=None, jitter=1.0)
    assert (bound.limit, bound.closed_for(0.0)) == (6, FIRST_BACKOFF)
    full(bound, 50)
    assert bound.limit == 6
    refuse(bound, held=6, number=4)
    assert bound.limit == 4


def test_everything_learned_is_forgotten_after_a_while_without_a_change() -> None:
    bound = Bound(40, forget_after=60.0)
    refuse(bound, held=10, number=3, now=0.0)
    assert bound.limit == 3
    full(bound, 5, now=59.0)  # nothing changes: the bound is at the number
    assert bound.at(59.9) is None
    change = bound.at(60.0)
    assert change == AllowanceChange(old=3, new=10, reason=ChangeReason.FORGOTTEN)
    assert (bound.ceiling, bound.round, bound.slow) == (40, 0, True)


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_the_jitter_spreads_the_backoff_over_its_second_half(jitter: float) -> None:
    bound = Bound(10)
    refuse(bound, held=1, number=10, jitter=jitter)
    assert bound.closed_for(0.0) == pytest.approx(FIRST_BACKOFF * (0.5 + jitter / 2))


def test_the_backoff_grows_by_a_tenth_per_refusal_up_to_its_cap() -> None:
    bound = Bound(10)
    backoffs = []
    for step in range(25):
        refuse(bound, held=1, number=10, jitter=1.0, now=float(step))
        backoffs.append(bound.backoff)
    assert (FIRST_BACKOFF, BACKOFF_GROWTH, MAX_BACKOFF) == (0.25, 1.1, 2.0)
    assert backoffs[:8] == [FIRST_BACKOFF, 0.275, 0.303, 0.333, 0.366, 0.403, 0.443, 0.487]
    assert backoffs[7] < 2 * FIRST_BACKOFF <= backoffs[8]  # doubled after eight
    assert backoffs[21] < MAX_BACKOFF
    assert backoffs[22:] == [MAX_BACKOFF] * 3


def test_a_refusal_that_leaves_nothing_held_restarts_the_slow_start() -> None:
    bound = Bound(10)
    refuse(bound, held=5, number=10)  # others hold the rest: down to 4, probing from now on
    assert (bound.limit, bound.slow) == (4, False)
    refuse(bound, held=1, number=10, stale=True)  # the last one held here: nothing is left
    assert (bound.limit, bound.slow) == (1, True)
    full(bound, 3, now=1.0)  # each request at full use adds one, as at the start
    assert bound.limit == 4


def test_a_refusal_that_leaves_places_held_keeps_probing() -> None:
    bound = Bound(10)
    refuse(bound, held=5, places=2, number=10)  # 3 of this allowance's places still held
    assert (bound.limit, bound.slow) == (3, False)
    full(bound, 2, now=1.0)  # a probe needs a run of 3 requests at full use
    assert bound.limit == 3
    full(bound, 1, now=1.0)
    assert bound.limit == 4


def test_a_report_after_a_long_quiet_first_forgets_what_was_learned() -> None:
    bound = Bound(40, forget_after=60.0)
    refuse(bound, held=4, number=3, now=0.0)
    assert bound.limit == 3
    # A request that ran an hour later: everything learned is forgotten first.
    change = bound.completed(level=1, granted=3, waiting=0, round=bound.round, now=61.0)
    assert change == AllowanceChange(old=3, new=10, reason=ChangeReason.FORGOTTEN)
    refuse(bound, held=4, number=3, now=200.0)
    assert bound.limit == 3
    # So is a refusal: forgotten, then judged afresh (11 still held: not below the bound).
    change = refuse(bound, held=12, now=300.0)
    assert change == AllowanceChange(old=3, new=10, reason=ChangeReason.FORGOTTEN)
    assert (bound.limit, bound.ceiling) == (10, 40)


def test_the_wait_before_forgetting_restarts_at_every_change() -> None:
    bound = Bound(40, forget_after=60.0)
    full(bound, now=10.0)  # slow start: a change at 10
    assert bound.limit == 11
    assert bound.at(69.9) is None
    assert bound.at(70.0) == AllowanceChange(old=11, new=10, reason=ChangeReason.FORGOTTEN)


def test_a_number_that_does_not_lower_the_bound_is_still_a_change_to_remember() -> None:
    bound = Bound(10, adaptive=False, forget_after=60.0)
    refuse(bound, held=5, number=4, now=0.0)
    assert bound.limit == 4
    # Half an hour later the service names a higher number (the allowance was raised):
    # the bound stays (a fixed one only falls), but the wait before forgetting restarts.
    assert refuse(bound, held=5, number=6, now=30.0) is None
    assert (bound.limit, bound.ceiling) == (4, 6)
    assert bound.at(60.0) is None
    assert bound.at(90.0) == AllowanceChange(old=4, new=10, reason=ChangeReason.FORGOTTEN)


def test_forgetting_a_number_that_never_lowered_the_bound_is_no_change() -> None:
    bound = Bound(40, forget_after=60.0)
    assert refuse(bound, held=25, number=20, now=0.0) is None  # 25 held: explained, 20 > 10
    assert (bound.limit, bound.ceiling) == (10, 20)
    assert bound.at(60.0) is None  # nothing to tell: the bound is where it starts
    assert bound.ceiling == 40


def test_a_probe_from_one_place_fails_back_to_one_without_backoff() -> None:
    bound = Bound(40)
    bound.completed(level=1, granted=10, waiting=0, round=0, now=0.0)  # one went through
    change = refuse(bound, held=2, jitter=1.0)  # 2 held, above the 1 that went through
    assert change == AllowanceChange(old=10, new=1, reason=ChangeReason.DECREASED)
    assert bound.closed_for(0.0) == 0.0  # its own holdings explain it


def test_a_late_refusal_others_explain_starts_a_backoff_when_none_runs() -> None:
    bound = Bound(40)
    full(bound, 2)  # slow start to 12; 11 went through
    refuse(bound, held=12)  # a failed probe: explained, no backoff
    assert (bound.limit, bound.closed_for(0.0)) == (11, 0.0)
    # A request of the earlier round refused with only 5 held: others hold the rest.
    refuse(bound, held=5, jitter=1.0, stale=True)
    assert (bound.limit, bound.closed_for(0.0)) == (4, FIRST_BACKOFF)


def test_repeated_refusals_halve_a_small_bound_down_to_one() -> None:
    bound = Bound(10)
    refuse(bound, held=4, number=3)  # explained by the 4 held: learned
    assert bound.limit == 3
    refuse(bound, held=4, number=3)  # again: halved, 3 // 2
    assert bound.limit == 1


def test_when_the_number_and_halving_agree_the_number_is_the_reason() -> None:
    bound = Bound(8)
    assert refuse(bound, held=9, number=8) is None  # explained; the number is the maximum
    change = refuse(bound, held=9, number=4)  # a repeat: halving says 4, so does the number
    assert change == AllowanceChange(old=8, new=4, reason=ChangeReason.LEARNED)


def test_a_refusal_that_leaves_the_bound_where_it_is_keeps_the_probe_run() -> None:
    bound = Bound(40)
    refuse(bound, held=5)  # unexplained (nothing went through yet): down to 4, round 1
    assert (bound.limit, bound.round) == (4, 1)
    for _ in range(2):  # requests of the earlier round ran at the full bound of 4
        bound.completed(level=4, granted=10, waiting=0, round=0, now=0.0)
    refuse(bound, held=5, stale=True)  # others hold 1: down to 4, where it is already
    assert (bound.limit, bound.round) == (4, 1)  # no drop: the same round
    for _ in range(2):
        bound.completed(level=4, granted=10, waiting=0, round=0, now=0.0)
    assert bound.limit == 5  # the run of 4 at full use went on: the probe


def test_each_drop_of_the_bound_starts_a_new_round() -> None:
    bound = Bound(20)
    full(bound, 10)
    rounds = [bound.round]
    for held in (20, 19, 9):  # a failed probe, a repeat (halved), another (halved)
        refuse(bound, held=held)
        rounds.append(bound.round)
    assert (bound.limit, rounds) == (4, [0, 1, 2, 3])
    # A refusal of a request granted two drops ago is of an answered overload: no halving.
    bound.rejected(number=None, held=3, places=1, round=1, now=0.0, jitter=0.0)
    assert (bound.limit, bound.round) == (2, 4)


def test_a_quiet_spell_counts_from_the_first_event_or_the_last_forgetting() -> None:
    bound = Bound(40, forget_after=60.0)
    refuse(bound, held=12, now=0.0)  # others hold 1: the bound stays at 10, slow start ends
    assert (bound.limit, bound.slow) == (10, False)
    full(bound, now=60.0)  # an hour of nothing since the first event: slow start again
    assert bound.limit == 11
    bound = Bound(40, forget_after=60.0)
    refuse(bound, held=12, now=0.0)
    assert bound.at(60.0) is None  # forgotten (the bound was where it starts: no change)
    refuse(bound, held=12, now=100.0)  # slow start ends again, the bound stays
    full(bound, now=120.0)  # 60 s since it was forgotten: forgotten again, slow start
    assert bound.limit == 11


def test_an_allowance_of_one_place_is_learned_as_one() -> None:
    bound = Bound(10)
    refuse(bound, held=2, number=1)  # the organization's allowance is a single place
    assert (bound.ceiling, bound.limit) == (1, 1)
    full(bound, 5, now=1.0)
    assert bound.limit == 1  # never above the number
