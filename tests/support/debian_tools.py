"""Command-line checkers the tests run, taken from Debian's packages without installing them.

`promtool` (package `prometheus`), `docker-compose` v1 (package `docker-compose`, a Python program)
and `spamassassin` (package `spamassassin`, a Perl program) are fetched with `apt-get download` and
unpacked with `dpkg -x` into a cache folder, the way `bench/postfix.py` fetches `smtp-sink`: no root
install, no daemon, nothing configured. A tool already on the PATH is used as it is. Where neither
works, `ToolUnavailable` says why in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
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


def _dependencies(package: str, wanted: Callable[[str], bool]) -> list[str]:
    """The `wanted` packages among those `package` needs, recursively."""
    command = [
        "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
        "--no-breaks", "--no-replaces", "--no-enhances", package,
    ]  # fmt: skip
    done = _run(command, Path.cwd())
    if done.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"], Path.cwd())  # a fresh machine's package lists are empty
        done = _run(command, Path.cwd())
    if done.returncode != 0:
        raise ToolUnavailable(f"apt-cache depends {package} exited {done.returncode}: {_last_line(done)}")
    names = {line.strip() for line in done.stdout.splitlines() if line and not line.startswith((" ", "<"))}
    return sorted(name for name in names if wanted(name))


def _python_dependencies(package: str) -> list[str]:
    """The `python3-*` packages `package` needs, recursively (the interpreter itself excluded)."""
    return _dependencies(package, lambda name: name.startswith("python3-") and name != "python3-minimal")


def _perl_module(name: str) -> bool:
    """A package of Perl modules (`lib…-perl`), not the interpreter (`perl`, `perl-base`,
    `perl-modules-5.36`, `libperl5.36`): the machine's own perl runs the unpacked modules."""
    return name.startswith("lib") and name.endswith("-perl")


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


def spamassassin(cache_dir: Path) -> list[str]:
    """The command that runs SpamAssassin's `spamassassin`: installed, or Debian's `spamassassin`
    package with the Perl modules it needs, unpacked beside it and run by the machine's perl with
    the package's own rules (`-C`) and configuration (`--siteconfigpath`). Checked by running
    `--version`, so a copy that cannot run (e.g. a perl other than the one Debian built the
    modules for) is `ToolUnavailable`, not a test failure."""
    installed = shutil.which("spamassassin")
    if installed:
        command = [installed]
    else:
        perl = shutil.which("perl")
        if perl is None:
            raise ToolUnavailable("no perl to run Debian's spamassassin package")
        if shutil.which("apt-cache") is None:
            raise ToolUnavailable("no apt-cache to resolve Debian's spamassassin package")
        root = unpacked(cache_dir, "spamassassin", ["spamassassin", *_dependencies("spamassassin", _perl_module)])
        script = root / "usr" / "bin" / "spamassassin"
        if not script.is_file():
            raise ToolUnavailable("Debian's spamassassin package holds no usr/bin/spamassassin")
        modules = [root / "usr" / "share" / "perl5", *sorted(root.glob("usr/lib/*/perl5/*"))]
        # -T because the script's #! line asks for taint mode (perl refuses to run it otherwise), and
        # taint mode ignores PERL5LIB: hence -I for the unpacked modules
        command = [perl, "-T", "-w", *(f"-I{path}" for path in modules), str(script)]
        command += ["-C", str(root / "usr" / "share" / "spamassassin")]
        command += ["--siteconfigpath", str(root / "etc" / "spamassassin")]
    done = _run([*command, "--version"], cache_dir)
    if done.returncode != 0:
        raise ToolUnavailable(f"spamassassin --version exited {done.returncode}: {_last_line(done)}")
    return command
