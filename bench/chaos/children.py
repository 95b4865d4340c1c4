"""Helper processes of the harness (the fault proxy, the SMTP sink) driven over a line protocol:
one JSON object per line on stdin, one answer per line on stdout, a `ready` line first."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.processes import BenchError, stop_process

_READY_TIMEOUT = 30.0
_ANSWER_TIMEOUT = 30.0


class LineChild:
    def __init__(self, process: asyncio.subprocess.Process, ready: dict[str, Any], name: str) -> None:
        self.process = process
        self.ready = ready
        self.name = name
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, module: str, *args: str, stderr: Path | None = None) -> LineChild:
        err = stderr.open("ab") if stderr is not None else None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err if err is not None else asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            if err is not None:
                err.close()
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                ready = await cls._read(process, module)
        except BaseException:
            await stop_process(process, 5)
            raise
        return cls(process, ready, module)

    @staticmethod
    async def _read(process: asyncio.subprocess.Process, name: str) -> dict[str, Any]:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line:
            raise BenchError(f"{name} exited ({await process.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        async with self._lock, asyncio.timeout(_ANSWER_TIMEOUT):
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            answer = await self._read(self.process, self.name)
        if not answer.get("ok", True):
            raise BenchError(f"{self.name}: {answer.get('error')}")
        return answer

    async def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        await stop_process(self.process, 5)
