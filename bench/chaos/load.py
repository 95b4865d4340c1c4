"""The chaos load, for the whole run: a stream producer at a fixed rate and HTTP clients that
retry on timeouts, 5xx and broken connections with the same `Idempotency-Key`, as a real client
would. Every command is written to the ledger before it is sent, every answer when it comes.

The producer talks to Redis directly (it is not a replica, so not behind the fault proxy), with
the client's own retries off: redis-py re-sends a command after a broken connection, and a
re-sent XADD whose first copy did land is a second command. A keyed command whose XADD failed
is sent again later (same key, same payload); a keyless one is not (a second entry would be a
second command).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bench.chaos.commands import Built, CommandFactory
from bench.chaos.facts import HttpResult, Xadd
from bench.chaos.ledger import Ledger
from bench.http_client import Connection, HttpError

DELIVERIES = "/api/v1/internal/deliveries"
_TICK = 0.05
_XADD_RETRY_AFTER = 1.0
_HTTP_TRY_TIMEOUT = 5.0


@dataclass
class RedisEpoch:
    """Counts restarts without persistence; an XADD answered in epoch N is an entry of stream N."""

    value: int = 0


@dataclass
class Progress:
    """What the load has done so far (for progress lines and the drain)."""

    stream_sent: int = 0
    stream_failed: int = 0
    http_acked: int = 0
    http_tries: int = 0
    last_entry: dict[int, str] = field(default_factory=dict)  # epoch → the last entry id Redis gave us


def producer_client(addr: str) -> Redis:
    host, _, port = addr.rpartition(":")
    return Redis(host=host, port=int(port), socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


class StreamProducer:
    def __init__(
        self, redis: Redis, stream: str, *, factory: CommandFactory, ledger: Ledger, epoch: RedisEpoch,
        progress: Progress, rate: float,
    ) -> None:  # fmt: skip
        self.redis, self.stream, self.factory, self.ledger = redis, stream, factory, ledger
        self.epoch, self.progress, self.rate = epoch, progress, rate
        self._retry: list[tuple[float, Built]] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        started, made = loop.time(), 0
        while not stop.is_set():
            due = int((loop.time() - started) * self.rate) - made
            batch: list[Built] = []
            for _ in range(max(0, due)):
                built = self.factory.stream(time.time())
                if not built.duplicate:
                    self.ledger.command(built.command)
                batch.append(built)
            made += max(0, due)
            now = loop.time()
            batch += [built for at, built in self._retry if at <= now]
            self._retry = [(at, built) for at, built in self._retry if at > now]
            if batch:
                await self._send(batch)
            await asyncio.sleep(_TICK)

    async def _send(self, batch: list[Built]) -> None:
        before = self.epoch.value
        try:
            pipe = self.redis.pipeline(transaction=False)
            for built in batch:
                pipe.xadd(self.stream, built.fields)  # type: ignore[arg-type]
            replies: list[object] = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            replies = [exc] * len(batch)
        after, now = self.epoch.value, time.time()
        for built, reply in zip(batch, replies, strict=True):
            chaos_id = built.command.chaos_id
            if isinstance(reply, Exception):
                self.progress.stream_failed += 1
                self.ledger.xadd(Xadd(chaos_id, None, None, now, f"{type(reply).__name__}: {str(reply)[:120]}"))
                if built.command.key is not None:  # keyed: a producer sends it again
                    self._retry.append((asyncio.get_running_loop().time() + _XADD_RETRY_AFTER, built))
                continue
            entry_id = reply.decode() if isinstance(reply, bytes) else str(reply)
            self.progress.stream_sent += 1
            self.progress.last_entry[after] = entry_id
            self.ledger.xadd(Xadd(chaos_id, entry_id, before if before == after else None, now))


class HttpClient:
    """One client: one command at a time, retried until a final answer or `give_up` seconds."""

    def __init__(
        self, ports: list[int], *, factory: CommandFactory, ledger: Ledger, progress: Progress, rng: random.Random,
        rate: float, give_up: float = 120.0,
    ) -> None:  # fmt: skip
        self.ports, self.factory, self.ledger, self.progress = ports, factory, ledger, progress
        self.rng, self.interval, self.give_up = rng, 1.0 / rate, give_up
        self._connections = {port: Connection("127.0.0.1", port) for port in ports}

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self.rng.random() * self.interval)
            while not stop.is_set():
                started = loop.time()
                built = self.factory.http(time.time())
                self.ledger.command(built.command)
                self.ledger.http(await self._submit(built))
                await asyncio.sleep(max(0.0, started + self.interval - loop.time()))
        finally:
            for connection in self._connections.values():
                await connection.close()

    async def _submit(self, built: Built) -> HttpResult:
        assert built.command.key is not None
        headers = {"Content-Type": "application/json", "Idempotency-Key": built.command.key}
        first, tries, backoff = time.time(), 0, 0.2
        answers: dict[str, int] = {}
        ids: list[str] = []
        while True:
            tries += 1
            self.progress.http_tries += 1
            connection = self._connections[self.rng.choice(self.ports)]  # a load balancer's choice
            try:
                async with asyncio.timeout(_HTTP_TRY_TIMEOUT):
                    status, body = await connection.post(DELIVERIES, built.body, headers)
                label = str(status)
            except (HttpError, TimeoutError, OSError) as exc:
                await connection.close()
                status, body, label = 0, b"", "timeout" if isinstance(exc, TimeoutError) else "connection_error"
            answers[label] = answers.get(label, 0) + 1
            if 200 <= status < 300:
                ids.append(str(orjson.loads(body).get("delivery_id")))
                self.progress.http_acked += 1
                return HttpResult(built.command.chaos_id, tries, status, tuple(ids), first, time.time(), answers)
            if 400 <= status < 500:
                return HttpResult(built.command.chaos_id, tries, status, tuple(ids), first, None, answers)
            if time.time() - first > self.give_up:
                return HttpResult(built.command.chaos_id, tries, None, tuple(ids), first, None, answers)
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 2.0)
