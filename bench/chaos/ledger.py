"""The harness's own record of what it did: in memory for the reconciliation, and appended to a
JSON-lines file as it happens (flushed per line), so a crashed run still shows what it sent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TextIO

from bench.chaos.facts import Command, Facts, FaultRecord, HttpResult, ReplicaExit, Xadd

_KINDS: dict[type[Any], str] = {
    Command: "command", Xadd: "xadd", HttpResult: "http", FaultRecord: "fault", ReplicaExit: "exit",
}  # fmt: skip


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.facts = Facts()
        self._out: TextIO = path.open("a")

    def _write(self, kind: str, item: Any) -> None:
        body = item if isinstance(item, dict) else dataclasses.asdict(item)
        self._out.write(json.dumps({"record": kind, **body}, separators=(",", ":")) + "\n")
        self._out.flush()

    def command(self, command: Command) -> None:
        self.facts.commands.append(command)
        self._write("command", command)

    def xadd(self, xadd: Xadd) -> None:
        self.facts.xadds.append(xadd)
        self._write("xadd", xadd)

    def http(self, result: HttpResult) -> None:
        self.facts.http.append(result)
        self._write("http", result)

    def fault(self, fault: FaultRecord) -> None:
        self.facts.faults.append(fault)
        self._write("fault", fault)

    def exit(self, record: ReplicaExit) -> None:
        self.facts.exits.append(record)
        self._write("exit", record)

    def wipe(self, at: float) -> None:
        self.facts.wipes.append(at)
        self._write("wipe", {"at": at})

    def note(self, event: str, **fields: Any) -> None:
        self._write("note", {"event": event, **fields})

    def close(self) -> None:
        self._out.close()
