"""The fault schedule: a pure function of the seed and the plan, so a run can be replayed.

Kills and SIGTERMs fall at uniformly random moments of the fault phase, each naming a replica (or
"leader": whichever replica consumes the stream at that moment) and the pause before it is
started again. Server restarts and network faults are spread over the phase in their own slots,
so that the recovery after each can be told apart: `pg_restart` (`pg_ctl restart -m immediate`),
`redis_wipe` (killed, data removed: the stream is recreated), `redis_restart` (killed, started
again on its append-only file), and through the proxy `latency` (+200 ms per round trip),
`reset` (a burst of RSTs), `blackhole` (10 s of silence) and `halfopen` (connections that accept
bytes and never answer), each on one server's routes for one replica or for all of them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

SERVERS = ("pg", "redis", "smtp")
NET_KINDS = ("latency", "reset", "blackhole", "halfopen")
NET_SECONDS = {"latency": 20.0, "reset": 5.0, "blackhole": 10.0, "halfopen": 10.0}
REPLICAS = 3


@dataclass(frozen=True)
class Plan:
    seed: int
    seconds: float  # the fault phase
    kills: int = 100
    sigterms: int = 10
    pg_restarts: int = 3
    redis_restarts: int = 2  # alternately without persistence (first) and with it
    net_each: int = 3  # faults of each network kind


@dataclass(frozen=True)
class Fault:
    at: float  # seconds into the fault phase
    kind: str
    target: str  # "replica:N" | "leader" | "postgres" | "redis" | "<server>:<N|all>"
    seconds: float = 0.0  # how long a network fault lasts; for a kill, the pause before the restart

    @property
    def chain(self) -> str:
        """Faults of one chain run one after the other; chains run side by side."""
        if self.kind in ("sigkill", "sigterm"):
            return "process"
        return "server" if self.kind in ("pg_restart", "redis_restart", "redis_wipe") else "net"


def _victim(rng: random.Random) -> str:
    return "leader" if rng.random() < 1 / 3 else f"replica:{rng.randrange(REPLICAS)}"


def build_schedule(plan: Plan) -> list[Fault]:
    rng = random.Random(plan.seed)
    end = plan.seconds * 0.95  # the last moments are quiet: every fault has ended before the drain
    faults = [Fault(rng.uniform(0, end), "sigkill", _victim(rng), rng.uniform(0.5, 5.0)) for _ in range(plan.kills)]
    faults += [Fault(rng.uniform(0, end), "sigterm", _victim(rng), rng.uniform(0.5, 3.0)) for _ in range(plan.sigterms)]
    big: list[tuple[str, str]] = [("pg_restart", "postgres")] * plan.pg_restarts
    big += [("redis_wipe" if i % 2 == 0 else "redis_restart", "redis") for i in range(plan.redis_restarts)]
    for kind in NET_KINDS:
        for i in range(plan.net_each):
            server = SERVERS[(i + NET_KINDS.index(kind)) % len(SERVERS)]  # each kind meets every server
            scope = "all" if rng.random() < 0.5 else str(rng.randrange(REPLICAS))
            big.append((kind, f"{server}:{scope}"))
    rng.shuffle(big)
    if big:
        slot = end / len(big)
        for index, (kind, target) in enumerate(big):
            at = index * slot + rng.uniform(0, slot * 0.3)
            seconds = min(NET_SECONDS.get(kind, 0.0), max(0.0, end - at))
            faults.append(Fault(at, kind, target, seconds))
    return sorted(faults, key=lambda fault: fault.at)


def schedule_digest(faults: list[Fault]) -> str:
    """A short fingerprint: two runs with the same seed and plan have the same one."""
    text = json.dumps([asdict(fault) for fault in faults], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def counts(faults: list[Fault]) -> dict[str, int]:
    found: dict[str, int] = {}
    for fault in faults:
        found[fault.kind] = found.get(fault.kind, 0) + 1
    return found
