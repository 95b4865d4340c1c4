"""What every bench module shares: its error type and stopping child processes for sure."""

from __future__ import annotations

import asyncio
import contextlib
import signal


class BenchError(Exception):
    """A scenario could not be measured; the message says what was seen."""


async def stop_process(process: asyncio.subprocess.Process, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Signal, wait up to `timeout`, then kill: the child is gone when this returns (its exit code)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                return await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await process.wait()
