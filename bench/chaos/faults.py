"""Carrying the schedule out: each fault at its moment, each recorded with when it started and ended.

A fault "ends" when what it broke is back: a killed replica answers HTTP again, PostgreSQL or
Redis answers again, the network fault is lifted. Three chains run side by side (processes,
servers, network), each fault of a chain after the previous one, so two faults never fight over
one proxy route or one server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from bench.chaos.children import LineChild
from bench.chaos.cluster import PostgresCluster, RedisServer
from bench.chaos.facts import FaultRecord
from bench.chaos.ledger import Ledger
from bench.chaos.load import RedisEpoch
from bench.chaos.replicas import Replicas, ReplicaSlot
from bench.chaos.schedule import REPLICAS, Fault
from bench.processes import BenchError

log = logging.getLogger("bench.chaos")
LATENCY_EACH_WAY = 0.1  # +200 ms per round trip
_RECOVERY_WAIT = 120.0


def routes_for(target: str) -> list[str]:
    """`pg:1` → ["r1-pg"]; `smtp:all` → every replica's smtp route."""
    server, _, scope = target.partition(":")
    slots = range(REPLICAS) if scope == "all" else [int(scope)]
    return [f"r{slot}-{server}" for slot in slots]


@dataclass
class Targets:
    replicas: Replicas
    postgres: PostgresCluster
    redis: RedisServer
    proxy: LineChild
    epoch: RedisEpoch
    ledger: Ledger


class FaultRunner:
    def __init__(self, targets: Targets, faults: list[Fault], seed: int) -> None:
        self.t = targets
        self.faults = faults
        self.rng = random.Random(seed + 2)
        self._background: set[asyncio.Task[None]] = set()
        self.started = 0.0

    async def run(self) -> None:
        """Every fault of the schedule, then wait until every one of them has ended."""
        self.started = asyncio.get_running_loop().time()
        chains: dict[str, list[Fault]] = {}
        for fault in self.faults:
            chains.setdefault(fault.chain, []).append(fault)
        await asyncio.gather(*(self._chain(faults) for faults in chains.values()))
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _chain(self, faults: list[Fault]) -> None:
        loop = asyncio.get_running_loop()
        for fault in faults:
            await asyncio.sleep(max(0.0, self.started + fault.at - loop.time()))
            try:
                await self._one(fault)
            except (BenchError, OSError) as exc:
                self.t.ledger.note("fault_failed", fault=fault.kind, target=fault.target, error=str(exc))
                log.warning("chaos: %s on %s failed: %s", fault.kind, fault.target, exc)

    async def _one(self, fault: Fault) -> None:
        if fault.kind in ("sigkill", "sigterm"):
            # SIGTERM goes to a replica at work (mid-batch): one still starting has no handler yet
            slot = await self._wait_for_victim(fault.target, ready=fault.kind == "sigterm")
            if slot is None:
                self.t.ledger.note("fault_skipped", fault=fault.kind, target=fault.target, why="no replica to hit")
                return
            task = asyncio.create_task(self._process_fault(fault, slot))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            await asyncio.sleep(0)
            return
        started = time.time()
        if fault.kind == "pg_restart":
            await self.t.postgres.restart_immediate()
        elif fault.kind in ("redis_restart", "redis_wipe"):
            await self._redis(fault.kind == "redis_wipe")
        elif fault.kind == "reset":
            await self._resets(routes_for(fault.target), fault.seconds)
        else:
            await self._network(fault.kind, routes_for(fault.target), fault.seconds)
        self._record(fault.kind, fault.target, started, time.time())

    async def _wait_for_victim(self, target: str, *, ready: bool) -> ReplicaSlot | None:
        """The replica to hit; when every one is down right now, the first to come back."""
        for _ in range(int(_RECOVERY_WAIT / 0.2)):
            slot = self._victim(target, ready=ready)
            if slot is not None:
                return slot
            await asyncio.sleep(0.2)
        return None

    def _victim(self, target: str, *, ready: bool) -> ReplicaSlot | None:
        slots = self.t.replicas.slots
        if target == "leader":
            leader = _leader(slots)
            if leader is not None and (leader.ready or not ready):
                return leader
            target = f"replica:{self.rng.randrange(len(slots))}"
        first = int(target.split(":")[1])
        for offset in range(len(slots)):  # that replica is down (restarting): the next one that runs
            slot = slots[(first + offset) % len(slots)]
            if slot.ready if ready else slot.running:
                return slot
        return None

    async def _process_fault(self, fault: Fault, slot: ReplicaSlot) -> None:
        started = time.time()
        slot.down_until = time.monotonic() + 3600  # held down until the pause is over
        if fault.kind == "sigkill":
            done = await slot.kill()
        else:
            done = await slot.terminate()
        stopped = time.time()
        slot.down_until = time.monotonic() + fault.seconds
        if not done:
            slot.down_until = 0.0
            return
        await asyncio.sleep(fault.seconds)
        await slot.wait_ready(_RECOVERY_WAIT)
        self._record(fault.kind, f"replica:{slot.index}", started, time.time(), f"stopped in {stopped - started:.1f}s")

    async def _redis(self, wipe: bool) -> None:
        await self.t.redis.kill()
        if wipe:
            self.t.epoch.value += 1
            self.t.ledger.wipe(time.time())
            self.t.redis.wipe()
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await self.t.redis.start()

    async def _network(self, mode: str, routes: list[str], seconds: float) -> None:
        delay = LATENCY_EACH_WAY if mode == "latency" else 0.0
        await self.t.proxy.ask({"op": "mode", "routes": routes, "mode": mode, "delay": delay})
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.t.proxy.ask({"op": "mode", "routes": routes, "mode": "pass"})

    async def _resets(self, routes: list[str], seconds: float) -> None:
        bursts = max(1, int(seconds))
        for index in range(bursts):
            await self.t.proxy.ask({"op": "reset", "routes": routes})
            if index < bursts - 1:
                await asyncio.sleep(self.rng.uniform(0.5, 1.5))

    def _record(self, kind: str, target: str, started: float, ended: float, detail: str = "") -> None:
        self.t.ledger.fault(FaultRecord(kind, target, started, ended, detail))


def _leader(slots: list[ReplicaSlot]) -> ReplicaSlot | None:
    """The running replica that most recently logged `lock_acquired` (it consumes the stream)."""
    best: tuple[float, ReplicaSlot] | None = None
    for slot in slots:
        incarnation = slot.current
        if incarnation is None or not slot.running:
            continue
        try:
            text = incarnation.log.read_bytes()
        except OSError:
            continue
        at = text.rfind(b'"lock_acquired"')
        if at >= 0 and (best is None or incarnation.started > best[0]):
            best = (incarnation.started, slot)
    return None if best is None else best[1]
