"""RetryPolicy: exponential backoff with jitter inside [base, max], and the decision after an attempt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsvc.domain.retry import Decision, RetryPolicy

BASE = timedelta(seconds=30)
MAX = timedelta(hours=1)
POLICY = RetryPolicy(base_delay=BASE, max_delay=MAX, max_attempts=10)
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
ALMOST_ONE = 0.999_999


@pytest.mark.parametrize("attempt", range(1, 12))
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, ALMOST_ONE])
def test_delay_stays_within_base_and_max(attempt: int, jitter: float) -> None:
    assert BASE <= POLICY.delay(attempt, jitter) <= MAX


@pytest.mark.parametrize(
    ("attempt", "raw"),
    [(2, BASE * 2), (3, BASE * 4), (4, BASE * 8), (6, BASE * 32)],
)
def test_delay_doubles_per_attempt_with_up_to_20_percent_jitter(attempt: int, raw: timedelta) -> None:
    assert POLICY.delay(attempt, 0.0) == raw * 0.8
    assert POLICY.delay(attempt, 0.5) == raw
    assert raw * 1.19 < POLICY.delay(attempt, ALMOST_ONE) < raw * 1.2


def test_the_first_retry_never_comes_sooner_than_the_base_delay() -> None:
    assert POLICY.delay(1, 0.0) == BASE
    assert BASE < POLICY.delay(1, ALMOST_ONE) < BASE * 1.2


def test_delay_is_capped_at_the_maximum() -> None:
    assert POLICY.delay(7, 0.5) == timedelta(minutes=32)  # 30 s · 2^6
    assert POLICY.delay(8, 0.5) == MAX  # 30 s · 2^7 = 64 min, capped
    for jitter in (0.0, ALMOST_ONE):
        assert POLICY.delay(8, jitter) <= MAX
    assert POLICY.delay(8, ALMOST_ONE) == MAX
    assert POLICY.delay(8, 0.0) == MAX * 0.8


def test_huge_attempt_numbers_neither_overflow_nor_pass_the_maximum() -> None:
    assert POLICY.delay(1000, ALMOST_ONE) == MAX
    assert POLICY.delay(10**9, 0.0) == MAX * 0.8


def test_base_equal_to_max_gives_a_constant_delay() -> None:
    flat = RetryPolicy(base_delay=timedelta(seconds=5), max_delay=timedelta(seconds=5), max_attempts=3)
    assert {flat.delay(n, j) for n in (1, 2, 9) for j in (0.0, ALMOST_ONE)} == {timedelta(seconds=5)}


def test_sent_is_final() -> None:
    assert POLICY.decide("sent", 1, NOW, None, 0.5) == Decision("sent")
    assert POLICY.decide("sent", 10, NOW, NOW - timedelta(hours=1), 0.5) == Decision("sent")


@pytest.mark.parametrize("attempt", [1, 10, 11])
def test_permanent_failure_dead_letters_at_once(attempt: int) -> None:
    assert POLICY.decide("permanent_failure", attempt, NOW, None, 0.5) == Decision(
        "dead_lettered", dead_reason="permanent_failure"
    )


@pytest.mark.parametrize("jitter", [0.0, ALMOST_ONE])
def test_transient_failure_is_queued_after_the_backoff(jitter: float) -> None:
    decision = POLICY.decide("transient_failure", 3, NOW, None, jitter)
    assert decision == Decision("queued", next_attempt_at=NOW + POLICY.delay(3, jitter))
    assert decision.dead_reason is None


def test_the_last_attempt_exhausts_the_retries() -> None:
    assert POLICY.decide("transient_failure", 9, NOW, None, 0.5).status == "queued"
    assert POLICY.decide("transient_failure", 10, NOW, None, 0.5) == Decision(
        "dead_lettered", dead_reason="attempts_exhausted"
    )
    assert POLICY.decide("transient_failure", 11, NOW, None, 0.5).dead_reason == "attempts_exhausted"


def test_a_single_attempt_policy_never_retries() -> None:
    once = RetryPolicy(base_delay=BASE, max_delay=MAX, max_attempts=1)
    assert once.decide("transient_failure", 1, NOW, None, 0.5).dead_reason == "attempts_exhausted"


def test_expiry_before_the_next_retry_dead_letters_as_expired() -> None:
    next_at = NOW + POLICY.delay(2, 0.5)  # 60 s
    assert POLICY.decide("transient_failure", 2, NOW, next_at, 0.5) == Decision("dead_lettered", dead_reason="expired")
    assert POLICY.decide("transient_failure", 2, NOW, next_at - timedelta(seconds=1), 0.5).dead_reason == "expired"
    assert POLICY.decide("transient_failure", 2, NOW, NOW - timedelta(seconds=1), 0.5).dead_reason == "expired"


def test_expiry_after_the_next_retry_still_retries() -> None:
    expires = NOW + POLICY.delay(2, 0.5) + timedelta(seconds=1)
    assert POLICY.decide("transient_failure", 2, NOW, expires, 0.5) == Decision(
        "queued", next_attempt_at=NOW + timedelta(seconds=60)
    )


def test_exhaustion_wins_over_expiry_and_permanent_over_both() -> None:
    past = NOW - timedelta(seconds=1)
    assert POLICY.decide("transient_failure", 10, NOW, past, 0.5).dead_reason == "attempts_exhausted"
    assert POLICY.decide("permanent_failure", 10, NOW, past, 0.5).dead_reason == "permanent_failure"


@pytest.mark.parametrize("base", [timedelta(minutes=5), timedelta(hours=1), timedelta(days=30)])
@pytest.mark.parametrize("attempt", [41, 64, 1000, 10**9])
def test_any_attempt_number_with_a_long_base_delay_is_capped_not_overflowing(base: timedelta, attempt: int) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=base * 12, max_attempts=10)
    assert policy.delay(attempt, 0.5) == base * 12
    assert policy.delay(attempt, ALMOST_ONE) == base * 12
    assert policy.decide("transient_failure", 1, NOW, None, 0.5).status == "queued"


@pytest.mark.parametrize("attempt", [0, -1, -(10**9)])
def test_attempt_numbers_below_one_count_as_the_first(attempt: int) -> None:
    assert POLICY.delay(attempt, 0.5) == POLICY.delay(1, 0.5) == BASE


def test_a_maximum_near_the_largest_timedelta_does_not_overflow_with_jitter() -> None:
    huge = RetryPolicy(base_delay=timedelta(days=1), max_delay=timedelta.max, max_attempts=10)
    assert huge.delay(10**6, ALMOST_ONE) == timedelta.max
    assert huge.delay(2, 0.5) == timedelta(days=2)


@given(
    base_s=st.integers(min_value=0, max_value=10**7),  # 0: a zero base stays zero
    factor=st.integers(min_value=1, max_value=10**4),
    attempt=st.integers(min_value=-(10**12), max_value=10**12),
    jitter=st.floats(min_value=0.0, max_value=ALMOST_ONE),
)
def test_delay_never_raises_and_stays_in_base_and_max(base_s: int, factor: int, attempt: int, jitter: float) -> None:
    base = timedelta(seconds=base_s)
    policy = RetryPolicy(base_delay=base, max_delay=base * factor, max_attempts=10)
    assert base <= policy.delay(attempt, jitter) <= base * factor
