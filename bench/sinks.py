"""The driver's side of the SMTP sinks: start one in its own process, count, wait, stop.

- `python`: `bench.sink` (aiosmtpd); stamps each arrival and reads `X-Bench-Sent-Ns`, so it
  is the one for latency. Tops out near 2,500 messages/s on a 2-core machine.
- `postfix`: Postfix's C `smtp-sink -c`, whose running counters go to a file we read the tail of;
  an arrival is timed when we see the counter move (polled every few milliseconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bench.postfix import PostfixUnavailable, SmtpSinkBinary, prepare_smtp_sink
from bench.processes import BenchError, stop_process
from devtools.embedded import free_port

SinkKind = Literal["python", "postfix"]
_POLL = 0.005
_COUNTER = re.compile(rb"mesg=(\d+)\r")
_TIMELINE_STEP_NS = 100_000_000


@dataclass(frozen=True)
class SinkStats:
    count: int
    last_ns: int | None
    latency: dict[str, float] | None = None
    bytes: int | None = None
    histogram: list[list[float | None]] | None = None  # [upper edge ms, count] of the latencies (python sink)


class Sink(Protocol):
    kind: SinkKind
    port: int

    async def stats(self) -> SinkStats: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


async def wait_for_count(
    sink: Sink,
    target: int,
    *,
    stall: float = 60.0,
    interval: float = _POLL,
    timeline: list[tuple[int, int]] | None = None,
) -> int:
    """Wait until the sink has `target` messages; the arrival time (ns) of the last one.

    `timeline`, when given, gets (time ns, count) every `_TIMELINE_STEP_NS` or so while the count
    moves, and the last arrival: throughput over time at the sink.
    Raises `BenchError` when the count has not moved for `stall` seconds."""
    loop = asyncio.get_running_loop()
    seen, moved = -1, loop.time()
    while True:
        stats = await sink.stats()
        if timeline is not None:
            now = time.time_ns()
            if not timeline or (stats.count != timeline[-1][1] and now - timeline[-1][0] >= _TIMELINE_STEP_NS):
                timeline.append((now, stats.count))
        if stats.count >= target:
            last = stats.last_ns or time.time_ns()
            if timeline is not None:
                if timeline[-1][1] == stats.count:
                    timeline.pop()
                timeline.append((last, stats.count))
            return last
        if stats.count != seen:
            seen, moved = stats.count, loop.time()
        elif loop.time() - moved > stall:
            raise BenchError(f"the sink stopped at {stats.count} of {target} messages (no progress for {stall:.0f}s)")
        await asyncio.sleep(interval)


class PythonSink:
    kind: SinkKind = "python"

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls) -> PythonSink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sink",
            "--port",
            "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(30):
                ready = await cls._read(process)
        except BaseException:
            await stop_process(process, 5)
            raise
        return cls(process, int(ready["port"]))

    @staticmethod
    async def _read(process: asyncio.subprocess.Process) -> dict[str, Any]:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line:
            raise BenchError(f"the python sink exited ({await process.wait()}); is aiosmtpd installed?")
        message: dict[str, Any] = json.loads(line)
        return message

    async def _ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        async with self._lock, asyncio.timeout(30):
            self.process.stdin.write(f"{command}\n".encode())
            await self.process.stdin.drain()
            return await self._read(self.process)

    async def stats(self) -> SinkStats:
        reply = await self._ask("stats")
        histogram = reply.get("histogram")
        return SinkStats(int(reply["count"]), reply["last_ns"], reply["latency"], int(reply["bytes"]), histogram)

    async def reset(self) -> None:
        await self._ask("reset")

    async def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        await stop_process(self.process, 5)


class PostfixSink:
    kind: SinkKind = "postfix"

    def __init__(self, process: asyncio.subprocess.Process, port: int, folder: Path, binary: SmtpSinkBinary) -> None:
        self.process = process
        self.port = port
        self.folder = folder
        self.counters = folder / "counters"
        self.binary = binary
        self._baseline = 0
        self._last_count = 0
        self._last_change_ns: int | None = None

    @classmethod
    async def start(cls, binary: SmtpSinkBinary) -> PostfixSink:
        folder = Path(tempfile.mkdtemp(prefix="mailsvc-bench-sink-"))
        port = free_port()
        env = dict(os.environ)
        if binary.library_dir is not None:
            env["LD_LIBRARY_PATH"] = str(binary.library_dir)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with (folder / "counters").open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                str(binary.path), "-c", *user, f"127.0.0.1:{port}", "1024",
                stdout=out, stderr=asyncio.subprocess.DEVNULL, env=env,
            )  # fmt: skip
        sink = cls(process, port, folder, binary)
        try:
            await sink._wait_listening()
        except BaseException:
            await sink.close()
            raise
        return sink

    async def _wait_listening(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process.returncode is not None:
                raise BenchError(f"smtp-sink exited with {self.process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    raise BenchError("smtp-sink did not listen in time") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return

    def _read_counter(self) -> int:
        with self.counters.open("rb") as counters:
            size = counters.seek(0, os.SEEK_END)
            counters.seek(max(0, size - 128))
            found = _COUNTER.findall(counters.read())
        return int(found[-1]) if found else 0

    async def stats(self) -> SinkStats:
        count = self._read_counter()
        if count != self._last_count:
            self._last_count, self._last_change_ns = count, time.time_ns()
        return SinkStats(count - self._baseline, self._last_change_ns)

    async def reset(self) -> None:
        self._baseline = self._last_count = self._read_counter()
        self._last_change_ns = None

    async def close(self) -> None:
        await stop_process(self.process, 5)
        shutil.rmtree(self.folder, ignore_errors=True)


async def start_sink(kind: str, cache_dir: Path) -> tuple[Sink, str | None]:
    """Start a sink of `kind` (auto | python | postfix); with it, why auto fell back, if it did."""
    if kind in ("auto", "postfix"):
        try:
            binary = await asyncio.to_thread(prepare_smtp_sink, cache_dir)
            return await PostfixSink.start(binary), None
        except (PostfixUnavailable, BenchError, OSError) as exc:
            if kind == "postfix":
                raise BenchError(f"postfix smtp-sink unavailable: {exc}") from None
            return await PythonSink.start(), f"postfix smtp-sink unavailable ({exc}); using the python sink"
    return await PythonSink.start(), None
