"""A small chaos run inside the suite, so a regression of "nothing acknowledged is ever lost" fails
CI: its own PostgreSQL and Redis, three replicas, a few kills, one restart of each server kind and
one of each network fault, 45 s of faults with a fixed seed. The full run is `make chaos`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--seed", "7", "--chaos-minutes", "0.75", "--kills", "3", "--sigterms", "1", "--pg-restarts", "1",
    "--redis-restarts", "2", "--net-faults", "1", "--stream-rate", "30", "--http-clients", "4",
    "--drain-timeout", "120",
]  # fmt: skip


def test_a_small_chaos_run_loses_nothing_acknowledged(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mailsvc", "bench", "chaos", *SMALL, "--work-dir", str(tmp_path / "run")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    summary = done.stderr.strip().splitlines()[-3:]
    assert done.stdout, done.stderr[-3000:]
    document: dict[str, Any] = json.loads(done.stdout)
    result = document["result"]
    assert (result["lost"], result["double_accepted"], result["unexplained_duplicates"]) == (0, 0, 0), summary
    assert result["violations"] == {}, json.dumps(result["violations"], indent=1)[:3000]
    assert done.returncode == 0, summary
    counts = result["counts"]
    assert counts["kills"] == {"sigkill": 3, "sigterm": 1}
    assert set(counts["faults"]) == {
        "pg_restart", "redis_wipe", "redis_restart", "latency", "reset", "blackhole", "halfopen",
    }  # fmt: skip
    assert counts["acknowledged_by_door"]["stream"] > 0
    assert counts["acknowledged_by_door"]["http"] > 0
    assert counts["redis_epochs"] == 2
    assert "seed=7" in summary[-1]
