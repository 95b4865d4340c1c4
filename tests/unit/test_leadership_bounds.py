"""The arithmetic behind "a holder that cannot prove it leads stops before anyone else can lead"
(SPEC §4, `mailsvc.adapters.postgres.advisory_lock`)."""

from __future__ import annotations

import pytest

from mailsvc.adapters.postgres import advisory_lock, tcp_liveness

STANDBY_RETRY_S = 1.0  # StreamConsumer.standby_interval


def test_the_holder_stops_long_before_the_server_can_release_the_lock() -> None:
    # the next proof is sent PROBE_INTERVAL after the last good one and fails PROBE_TIMEOUT later
    assert advisory_lock.PROBE_INTERVAL_S <= 5  # SPEC: a probe at least every 5 s
    assert advisory_lock.PROBE_INTERVAL_S + advisory_lock.PROBE_TIMEOUT_S < advisory_lock.LEASE_S
    # the server ends a silent session SILENCE_LIMIT after it last heard from it, no sooner: the
    # holder has stopped claiming the lock 10 s before (a commit begun in time is bounded by 5 s)
    assert advisory_lock.LEASE_S + 10 <= tcp_liveness.SILENCE_LIMIT_S


def test_server_side_bounds_agree_and_a_vanished_holder_is_replaced_within_30s() -> None:
    keepalive = tcp_liveness.KEEPALIVE_IDLE_S + tcp_liveness.KEEPALIVE_INTERVAL_S * tcp_liveness.KEEPALIVE_COUNT
    assert keepalive == tcp_liveness.SILENCE_LIMIT_S  # with or without TCP_USER_TIMEOUT support
    assert tcp_liveness.SERVER_SETTINGS["tcp_user_timeout"] == str(tcp_liveness.SILENCE_LIMIT_S * 1000)
    # the keepalive timer may tick once more before the session ends; a standby retries every second
    takeover = tcp_liveness.SILENCE_LIMIT_S + tcp_liveness.KEEPALIVE_INTERVAL_S + STANDBY_RETRY_S
    assert takeover <= 30


def test_a_lease_outliving_the_servers_patience_is_refused() -> None:
    with pytest.raises(ValueError, match="lease"):
        advisory_lock.AdvisoryLock("postgresql://x/y", "n", lease=tcp_liveness.SILENCE_LIMIT_S)
    with pytest.raises(ValueError, match="lease"):
        advisory_lock.AdvisoryLock("postgresql://x/y", "n", probe_interval=3, probe_timeout=2, lease=5)
