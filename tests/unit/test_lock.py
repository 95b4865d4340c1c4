"""requirements.lock, the runtime dependencies pinned with hashes, agrees with pyproject.toml.

The image (`deploy/Dockerfile`) and `make install` install it with `pip --require-hashes`. When
pyproject.toml's dependencies change, `make lock` rewrites it; these tests say when that is due:
every runtime requirement satisfied by a pin, every line pinned with `==` and hashed, and the lock
exactly the dependency closure of pyproject.toml here (nothing missing, nothing stale), installed
at the locked versions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")
REGENERATE = "pyproject.toml and requirements.lock disagree: run `make lock` (then `make install`)"


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def version(self) -> str:
        (spec,) = self.requirement.specifier
        return spec.version

    def applies(self) -> bool:
        """Whether the pin's marker (e.g. `sys_platform != 'win32'`) holds on this machine."""
        return self.requirement.marker is None or self.requirement.marker.evaluate()


@cache
def pins() -> tuple[Pin, ...]:
    """The lock's requirements: continuation lines joined, comments dropped."""
    logical = re.sub(r"\\\n", " ", LOCK.read_text())
    found = []
    for line in logical.splitlines():
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        requirement_text = text.split(" --hash=", 1)[0].strip()
        requirement = Requirement(requirement_text)
        found.append(Pin(canonicalize_name(requirement.name), requirement, tuple(_HASH.findall(text))))
    return tuple(found)


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def pins_named(name: str) -> list[Pin]:
    return [pin for pin in pins() if pin.name == canonicalize_name(name)]


def test_every_lock_line_is_one_exact_version_with_hashes() -> None:
    assert pins(), "requirements.lock lists nothing"
    seen: set[tuple[NormalizedName, str]] = set()
    for pin in pins():
        specifiers = list(pin.requirement.specifier)
        assert len(specifiers) == 1, f"{pin.requirement}: one exact pin"
        assert specifiers[0].operator == "==", f"{pin.requirement}: pinned with == (no range)"
        assert "*" not in specifiers[0].version, f"{pin.requirement}: no wildcard"
        assert not pin.requirement.url, f"{pin.requirement}: no direct URL"
        assert pin.hashes, f"{pin.requirement}: no --hash, so pip --require-hashes refuses the whole lock"
        key = (pin.name, str(pin.requirement.marker))
        assert key not in seen, f"{pin.name} twice under the same marker"
        seen.add(key)


def test_every_runtime_requirement_is_satisfied_by_a_pin() -> None:
    for requirement in runtime_requirements():
        locked = pins_named(requirement.name)
        assert locked, f"{requirement} is not in requirements.lock. {REGENERATE}"
        for pin in locked:
            assert requirement.specifier.contains(pin.version, prereleases=True), (
                f"{requirement} is not satisfied by the locked {pin.name}=={pin.version}. {REGENERATE}"
            )


def applies(marker: Marker | None, extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure() -> dict[NormalizedName, str]:
    """Every distribution pyproject.toml's runtime requirements pull in here, with its installed
    version: the requirement graph walked through the installed packages' metadata, markers and
    extras evaluated for this interpreter."""
    found: dict[NormalizedName, str] = {}
    todo: list[tuple[Requirement, set[str]]] = [(r, set()) for r in runtime_requirements()]
    expanded: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        requirement, parent_extras = todo.pop()
        if not applies(requirement.marker, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in expanded:
            continue
        expanded.add(key)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{requirement} is not installed: run `make install`") from None
        found[name] = distribution.version
        todo.extend((Requirement(text), set(requirement.extras)) for text in distribution.requires or [])
    return found


def test_the_lock_is_the_runtime_closure_installed_at_its_versions() -> None:
    needed = closure()
    applicable = {pin.name: pin for pin in pins() if pin.applies()}
    missing = sorted(set(needed) - set(applicable))
    assert not missing, f"needed at run time but not locked: {missing}. {REGENERATE}"
    stale = sorted(set(applicable) - set(needed))
    assert not stale, f"locked but needed by nothing in pyproject.toml: {stale}. {REGENERATE}"
    moved = sorted(
        f"{name} {needed[name]} (locked {pin.version})"
        for name, pin in applicable.items()
        if needed[name] != pin.version
    )
    assert not moved, f"installed at other versions than locked: {moved}: run `make install`"


def test_the_image_installs_the_lock_with_hashes_checked() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY requirements\.lock ", text, re.MULTILINE), "the builder copies the lock"
    (install,) = [line for line in text.splitlines() if "--require-hashes" in line]
    assert "-r requirements.lock" in install
    assert "install --no-compile --no-deps /wheels/" in text, "the project's wheel adds no unlocked dependency"
