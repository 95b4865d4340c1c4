"""Stream leadership: a session-level PostgreSQL advisory lock, checked rather than assumed (SPEC §4).

The lock lives exactly as long as its session, and neither end can take the other's word for it:
a session outlives a vanished holder until TCP gives up on it, and a holder outlives a session
that was ended (`pg_terminate_backend`, a restart) when the close never reaches it. So the lock's
connection carries keepalives and a user timeout on both ends (`tcp_liveness`), and the holder
proves every `PROBE_INTERVAL_S` — from `pg_locks`, within `PROBE_TIMEOUT_S` — that its own
backend still holds the lock. `held` is true only within `LEASE_S` of the last proof.

The bounds, for a holder cut off from PostgreSQL (vanished host, partition), t0 being when the
last successful proof was sent (the server received it at t0 or later):

- t0 + 2 s: the next proof goes out; it fails by t0 + 4 s at the latest: `lock_lost` is logged.
- t0 + 5 s: `LEASE_S` runs out, whatever the probe is doing. The consumer checks `held` before
  every commit, so it starts none after this.
- t0 + 15 s: `SILENCE_LIMIT_S` after it last heard from the holder, the earliest the server can
  end the session and so the earliest another replica can get the lock. The holder stopped 10 s
  before; a commit it started just in time is bounded by `statement_timeout` (5 s by default),
  and even a later one cannot accept a command twice: the offset compare-and-set lets only one
  writer advance from a given offset.
- about t0 + 17 s: the server has ended the session (its keepalive timer ticks every 2 s); a
  standby tries the lock every second, so it leads by about t0 + 18 s, within SPEC's 30 s.

A session ended on purpose frees the lock at once; the holder hears the close at once
(termination listener), or at its next proof if the close was lost, and the offset
compare-and-set keeps it from moving the offset meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from mailsvc.adapters.postgres.tcp_liveness import SERVER_SETTINGS, SILENCE_LIMIT_S, bound_client_socket

log = logging.getLogger("mailsvc.lock")

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0
LEASE_S = 5.0  # > interval + timeout (a healthy lock never lapses), < SILENCE_LIMIT_S - 10 s of margin

_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext($1))"
# A bigint advisory key shows in pg_locks as classid = its high 32 bits, objid = its low 32 bits.
_PROVE = """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND objsubid = 1
          AND classid::bigint = (hashtext($1)::bigint >> 32) & 4294967295
          AND objid::bigint = hashtext($1)::bigint & 4294967295)
"""


def asyncpg_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


class AdvisoryLock:
    def __init__(
        self,
        dsn: str,
        name: str,
        *,
        connect_timeout: float = 5.0,
        probe_interval: float = PROBE_INTERVAL_S,
        probe_timeout: float = PROBE_TIMEOUT_S,
        lease: float = LEASE_S,
    ) -> None:
        if not probe_interval + probe_timeout < lease < SILENCE_LIMIT_S:
            raise ValueError("the lease must outlast one probe round and end before the server's silence limit")
        self.dsn = asyncpg_dsn(dsn)
        self.name = name
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.lease = lease
        self._conn: Any = None  # asyncpg.Connection
        self._prover: asyncio.Task[None] | None = None
        self._proven_at = float("-inf")  # time.monotonic() when the last successful proof was sent
        self._lost = asyncio.Event()

    @property
    def held(self) -> bool:
        """True while the lock was proven held within the lease. Attribute arithmetic only (the
        metrics exporter's thread reads it through the consumer's lag)."""
        conn = self._conn
        return (
            conn is not None
            and not conn.is_closed()
            and not self._lost.is_set()
            and time.monotonic() < self._proven_at + self.lease
        )

    async def try_acquire(self) -> bool:
        """True when this process now holds the lock (or already did); False when another session
        holds it. Raises what connecting raises (PostgreSQL unreachable, `TimeoutError`)."""
        if self.held:
            return True
        await self.release()
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            server_settings={"application_name": "mailsvc-lock", **SERVER_SETTINGS},
        )
        try:
            bound_client_socket(conn)
            sent = time.monotonic()
            async with asyncio.timeout(self.probe_timeout):
                got = await conn.fetchval(_TRY_LOCK, self.name)
        except BaseException:
            conn.terminate()  # had the lock been granted, the session's end releases it
            raise
        if not got:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
            return False
        self._conn, self._proven_at, self._lost = conn, sent, asyncio.Event()
        conn.add_termination_listener(self._on_connection_closed)
        self._prover = asyncio.create_task(self._keep_proving(conn), name="consumer-lock-prover")
        log.info("lock_acquired", extra={"lock": self.name})
        return True

    async def wait_lost(self) -> None:
        """Return once the lock can no longer be proven held (at once when it is not held)."""
        while self.held:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._proven_at + self.lease - time.monotonic())):
                    await self._lost.wait()

    async def release(self) -> None:
        """Give the lock up (a no-op when not held): its session ends."""
        conn, self._conn = self._conn, None
        prover, self._prover = self._prover, None
        if prover is not None:
            prover.cancel()
            await asyncio.gather(prover, return_exceptions=True)
        if conn is None or conn.is_closed():
            return
        if self._lost.is_set():
            conn.terminate()  # a connection that failed its proof is not worth a goodbye
            return
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)

    async def _keep_proving(self, conn: Any) -> None:
        while True:
            await asyncio.sleep(max(0.0, self._proven_at + self.probe_interval - time.monotonic()))
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self.probe_timeout):
                    still_held = await conn.fetchval(_PROVE, self.name)
            except Exception as exc:
                self._lose(conn, f"proof failed: {type(exc).__name__}")
                return
            if not still_held:
                self._lose(conn, "this session no longer holds the lock")
                return
            self._proven_at = sent

    def _on_connection_closed(self, conn: Any) -> None:
        self._lose(conn, "connection closed")

    def _lose(self, conn: Any, reason: str) -> None:
        if conn is not self._conn or self._lost.is_set():
            return  # released on purpose, or already known
        self._lost.set()
        # end the session now: if it still holds the lock (a slow server, not a dead one), another
        # replica may take over instead of waiting for the server to notice
        conn.terminate()
        log.warning("lock_lost", extra={"lock": self.name, "reason": reason})
