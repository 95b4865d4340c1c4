"""Command-line checkers the deploy tests run, taken from Debian's packages without installing them.

`promtool` (package `prometheus`) and `docker-compose` v1 (package `docker-compose`, a Python
program) are fetched with `apt-get download` and unpacked with `dpkg -x` into a cache folder, the way
`bench/postfix.py` fetches `smtp-sink`: no root install, no daemon, nothing configured. A tool
already on the PATH is used as it is. Where neither works, `ToolUnavailable` says why in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_TIMEOUT = 300


class ToolUnavailable(Exception):
    """The tool is not installed and could not be fetched; the message says why."""


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolUnavailable(f"{command[0]}: {exc}") from None


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if not line.startswith("W:")]
    return lines[-1] if lines else "no output"


def _download(packages: list[str], into: Path) -> None:
    """`apt-get download` the packages; once `apt-get update` if the package lists lack them (root only)."""
    done = _run(["apt-get", "download", *packages], into)
    if done.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"], into)
        done = _run(["apt-get", "download", *packages], into)
    if done.returncode != 0:
        raise ToolUnavailable(f"apt-get download {' '.join(packages)} exited {done.returncode}: {_last_line(done)}")


def _python_dependencies(package: str) -> list[str]:
    """The `python3-*` packages `package` needs, recursively (the interpreter itself excluded)."""
    done = _run(
        [
            "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
            "--no-breaks", "--no-replaces", "--no-enhances", package,
        ],
        Path.cwd(),
    )  # fmt: skip
    if done.returncode != 0:
        raise ToolUnavailable(f"apt-cache depends {package} exited {done.returncode}: {_last_line(done)}")
    names = {line.strip() for line in done.stdout.splitlines() if line and not line.startswith((" ", "<"))}
    return sorted(n for n in names if n.startswith("python3-") and n != "python3-minimal")


def unpacked(cache_dir: Path, name: str, packages: list[str]) -> Path:
    """A folder holding the files of `packages` (`cache_dir/name`), fetched and unpacked once."""
    root = cache_dir.resolve() / name
    if root.is_dir():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ToolUnavailable(f"no apt-get/dpkg to fetch Debian's {packages[0]} package")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # unpacked beside the cache and renamed into place: a run stopped halfway leaves no half tool
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{name}-") as work:
        debs, staging = Path(work) / "debs", Path(work) / "root"
        debs.mkdir()
        _download(packages, debs)
        for deb in sorted(debs.glob("*.deb")):
            done = _run(["dpkg", "-x", str(deb), str(staging)], debs)
            if done.returncode != 0:
                raise ToolUnavailable(f"dpkg -x {deb.name} exited {done.returncode}: {_last_line(done)}")
        if not root.exists():
            staging.rename(root)
    return root


def promtool(cache_dir: Path) -> Path:
    """Prometheus' `promtool`: installed, or from Debian's `prometheus` package."""
    installed = shutil.which("promtool")
    if installed:
        return Path(installed)
    binary = unpacked(cache_dir, "prometheus", ["prometheus"]) / "usr" / "bin" / "promtool"
    if not binary.is_file():
        raise ToolUnavailable("Debian's prometheus package holds no usr/bin/promtool")
    return binary


def docker_compose(cache_dir: Path) -> list[str]:
    """The command that runs `docker-compose`: installed, or Debian's `docker-compose` package
    (Compose v1, a Python program) with the Python packages it imports, unpacked beside it and
    run by an interpreter that sees only them and the standard library."""
    installed = shutil.which("docker-compose")
    if installed:
        return [installed]
    if shutil.which("apt-cache") is None:
        raise ToolUnavailable("no apt-cache to resolve Debian's docker-compose package")
    root = unpacked(cache_dir, "docker-compose", ["docker-compose", *_python_dependencies("docker-compose")])
    script = root / "usr" / "bin" / "docker-compose"
    if not script.is_file():
        raise ToolUnavailable("Debian's docker-compose package holds no usr/bin/docker-compose")
    if not script.read_bytes().startswith(b"#!"):
        return [str(script)]  # a compiled Compose (v2) needs nothing else
    shebang = script.read_text().splitlines()[0][2:].strip().split()[0]
    python = shebang if Path(shebang).is_file() else sys.executable
    paths = [str(root / "usr" / "lib" / "python3" / "dist-packages")]
    paths += [str(p) for p in sorted((root / "usr" / "lib").glob("python3.*"))]  # Debian's split-off distutils
    boot = (
        "import sys; "
        f"sys.path[:0] = {paths!r}; "
        "sys.argv[0] = 'docker-compose'; "
        "from compose.cli.main import main; "
        "sys.exit(main())"
    )
    # -I: no user site, no PYTHON* variables; -S: no site-packages (neither the venv's nor Debian's)
    return [python, "-I", "-S", "-c", boot]
