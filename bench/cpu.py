"""CPU and WAL over a measurement window: the service processes and PostgreSQL, from `/proc`.

The window runs from the first replica's readiness to the sink's last arrival; each replica's own
CPU is counted from its own readiness (so a later replica's start-up is not in it).

- **Service**: each `mailsvc serve` process's utime + stime, plus cutime + cstime (the children it
  waited for; it starts none today, so this is for safety); read by `bench.service`.
- **PostgreSQL**: the postmaster is found as the parent of our own backend (`pg_backend_pid()`),
  which needs PostgreSQL on this machine, in our PID namespace. Its cluster's CPU is the
  postmaster's own time + its reaped children's (cutime + cstime: backends that exited) + every
  live child's (backends, walwriter, checkpointer, autovacuum, ...). On the machine's shared
  PostgreSQL that includes whatever else uses the cluster meanwhile (other test runs), so the
  report also gives the client backends connected to the run's own database alone (sampled at both
  ends from `pg_stat_activity`; a backend of that database that ends inside the window is lost
  from that figure, the service's pooled connections do not).
- **WAL**: `pg_current_wal_lsn()` at both ends; cluster-wide, same caveat.

Each figure is None when it cannot be read (no `/proc`, PostgreSQL elsewhere)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # fields from 3 (state) on: the name may hold spaces and ")"


def process_cpu_s(pid: int, *, children: bool = True) -> float | None:
    """utime + stime (+ cutime + cstime) of `pid` in seconds, or None when it cannot be read."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def children_of(parent: int) -> list[int]:
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == parent:
            found.append(int(entry.name))
    return found


def _command_name(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def cluster_cpu_s(postmaster: int) -> float | None:
    """The postmaster with its reaped children, plus every live child (each once)."""
    total = process_cpu_s(postmaster, children=True)
    if total is None:
        return None
    for child in children_of(postmaster):
        total += process_cpu_s(child, children=True) or 0.0
    return total


def _sum_cpu(pids: Iterable[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        used = process_cpu_s(pid, children=True)
        if used is not None:
            out[pid] = used
    return out


def _round(value: Any) -> Any:
    if isinstance(value, list):
        return [_round(item) for item in value]
    return round(value, 3) if isinstance(value, float) else value


@dataclass
class Sample:
    cluster: float | None
    run_db: dict[int, float]
    wal_lsn: str


class CpuWindow:
    """`start()` when the window opens (the first replica answers), `stop(service CPU seconds of
    each replica since its own readiness)` when it closes; `figures(deliveries)` after."""

    def __init__(self, admin_dsn: str, database: str) -> None:
        self.admin_dsn = admin_dsn.replace("+asyncpg", "", 1)
        self.database = database
        self.service_s: list[float | None] = []
        self.postmaster: int | None = None
        self.first: Sample | None = None
        self.last: Sample | None = None
        self.problems: list[str] = []
        self._conn: asyncpg.Connection | None = None
        self._wal: float | None = None

    async def _locate_postmaster(self, conn: asyncpg.Connection) -> None:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        parent = parent_pid(backend)
        if parent is None or _command_name(parent) not in ("postgres", "postmaster"):
            self.problems.append(f"PostgreSQL backend {backend} not visible in /proc: no PostgreSQL CPU figures")
            return
        self.postmaster = parent

    async def _sample(self) -> Sample:
        assert self._conn is not None
        lsn = str(await self._conn.fetchval("SELECT pg_current_wal_lsn()::text"))
        pids = await self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", self.database
        )
        cluster = cluster_cpu_s(self.postmaster) if self.postmaster is not None else None
        run_db = _sum_cpu(int(row["pid"]) for row in pids) if self.postmaster is not None else {}
        return Sample(cluster, run_db, lsn)

    async def start(self) -> None:
        try:
            self._conn = await asyncpg.connect(self.admin_dsn)
            await self._locate_postmaster(self._conn)
            self.first = await self._sample()
        except (OSError, asyncpg.PostgresError) as exc:
            self.problems.append(f"no PostgreSQL CPU or WAL figures: {exc}")
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def stop(self, service_s: list[float | None]) -> None:
        self.service_s = service_s
        if self._conn is None or self.first is None:
            return
        try:
            self.last = await self._sample()
            diff = "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)"
            self._wal = float(await self._conn.fetchval(diff, self.last.wal_lsn, self.first.wal_lsn))
        finally:
            await self._conn.close()

    def used(self) -> dict[str, Any]:
        """CPU seconds and WAL bytes over the window, by process group."""
        first, last = self.first, self.last
        out: dict[str, Any] = {"service_s": self.service_s}
        if first is None or last is None:
            return out
        if first.cluster is not None and last.cluster is not None:
            run_db = sum(value - first.run_db.get(pid, 0.0) for pid, value in last.run_db.items())
            out["postgres_cluster_s"] = last.cluster - first.cluster
            out["postgres_run_db_s"] = run_db
            out["postgres_other_s"] = max(0.0, out["postgres_cluster_s"] - run_db)
        if self._wal is not None:
            out["wal_bytes"] = self._wal
        return out

    def figures(self, deliveries: int, prefix: str = "") -> dict[str, float]:
        """Per-delivery figures (ms of CPU, bytes of WAL) for a scenario's `figures`."""
        used, per = self.used(), 1000.0 / max(1, deliveries)
        out: dict[str, float] = {}
        services = used.get("service_s", [])
        if services and all(value is not None for value in services):
            out[f"{prefix}service_cpu_ms_per_delivery"] = sum(services) * per
        if "postgres_cluster_s" in used:
            out[f"{prefix}postgres_cpu_ms_per_delivery"] = used["postgres_cluster_s"] * per
            out[f"{prefix}postgres_run_db_cpu_ms_per_delivery"] = used["postgres_run_db_s"] * per
        if f"{prefix}service_cpu_ms_per_delivery" in out and f"{prefix}postgres_cpu_ms_per_delivery" in out:
            out[f"{prefix}cpu_ms_per_delivery"] = (
                out[f"{prefix}service_cpu_ms_per_delivery"] + out[f"{prefix}postgres_cpu_ms_per_delivery"]
            )
        if "wal_bytes" in used:
            out[f"{prefix}wal_bytes_per_delivery"] = used["wal_bytes"] / max(1, deliveries)
        return out

    def details(self, deliveries: int) -> dict[str, Any]:
        """What the report shows per process: CPU ms per delivery of each replica and PostgreSQL part."""
        used, per = self.used(), 1000.0 / max(1, deliveries)
        by_process: dict[str, float] = {}
        for index, value in enumerate(used.get("service_s", [])):
            if value is not None:
                by_process[f"service #{index + 1}"] = round(value * per, 4)
        if "postgres_cluster_s" in used:
            by_process["postgres: run database backends"] = round(used["postgres_run_db_s"] * per, 4)
            by_process["postgres: rest of the cluster"] = round(used["postgres_other_s"] * per, 4)
        out: dict[str, Any] = {
            "cpu_ms_per_delivery_by_process": by_process,
            "cpu_s": {name: _round(value) for name, value in used.items()},
            "postmaster_pid": self.postmaster,
        }
        if self.problems:
            out["problems"] = self.problems
        return out
