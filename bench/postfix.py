"""Postfix's C `smtp-sink`, taken from Debian's `postfix` package without installing it.

`apt-get download postfix` fetches the .deb (~1.5 MB) into the cache folder and `dpkg -x`
extracts it there; no MTA is configured or started. An `smtp-sink` already on the machine is used
as is.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_DOWNLOAD_TIMEOUT = 180


@dataclass(frozen=True)
class SmtpSinkBinary:
    path: Path
    library_dir: Path | None  # LD_LIBRARY_PATH for an extracted package
    version: str


class PostfixUnavailable(Exception):
    """`smtp-sink` could not be found or prepared; the message says why."""


def _installed() -> SmtpSinkBinary | None:
    found = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").is_file() else None)
    return SmtpSinkBinary(Path(found), None, "installed") if found else None


def _extracted(cache_dir: Path) -> SmtpSinkBinary | None:
    root = cache_dir / "postfix"
    binary = root / "usr" / "sbin" / "smtp-sink"
    if not binary.is_file():
        return None
    debs = sorted(cache_dir.glob("postfix_*.deb"))
    version = debs[-1].name.split("_")[1] if debs else "unknown"
    return SmtpSinkBinary(binary, root / "usr" / "lib" / "postfix", version)


def _run(command: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostfixUnavailable(f"{command[0]}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PostfixUnavailable(f"{' '.join(command)} exited {done.returncode}: {detail[0]}")


def prepare_smtp_sink(cache_dir: Path) -> SmtpSinkBinary:
    """An `smtp-sink` to run: installed, already extracted, or downloaded and extracted now."""
    cache_dir = cache_dir.resolve()
    for found in (_installed(), _extracted(cache_dir)):
        if found is not None:
            return found
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise PostfixUnavailable("no smtp-sink installed and no apt-get/dpkg to fetch Debian's postfix package")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not any(cache_dir.glob("postfix_*.deb")):
        _run(["apt-get", "download", "postfix"], cache_dir)
    debs = sorted(cache_dir.glob("postfix_*.deb"))
    if not debs:
        raise PostfixUnavailable("apt-get download postfix produced no .deb (try `apt-get update`)")
    _run(["dpkg", "-x", str(debs[-1]), str(cache_dir / "postfix")], cache_dir)
    found = _extracted(cache_dir)
    if found is None:
        raise PostfixUnavailable(f"{debs[-1].name} holds no usr/sbin/smtp-sink")
    return found
