"""The value types settings hold, the parsers that turn a variable's text into them, and the
inverse (`format_value`) that writes a default back as text for `.env.example` and the README.

A parser raises `ValueError` with a message that completes "NAME: ..." (the loader adds the name).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mailsvc.domain.mime import ascii_address, make_message_id


class Secret:
    """A string that never shows itself in `repr`/`str` (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HostPort:
    host: str  # "" means all interfaces
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """An IP literal in 127.0.0.0/8 or `::1`, or the name `localhost` (SPEC §4). A name is
        never loopback for what it looks like: `127.mail.example.com` is a host on the internet."""
        if self.host.lower() == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return ip in _LOOPBACK_V4 if ip.version == 4 else ip == _LOOPBACK_V6


# explicit rather than `ip.is_loopback`, which newer Pythons (gh-117566) also give `::ffff:127.x`
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.ip_address("::1")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration (`250ms`, `1m30s`, `24h`). `0` alone is allowed."""
    text = text.strip()
    if text == "0":
        return timedelta(0)
    if not text:
        raise ValueError("empty duration")
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration (use Go syntax such as 250ms, 2s, 1m30s, 24h)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`, for `.env.example` and messages (`1m30s`, `250ms`)."""
    ms = round(value.total_seconds() * 1000)
    if ms % 1000:
        return f"{ms}ms"
    secs = ms // 1000
    hours, rest = divmod(secs, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return out or "0s"


def parse_host_port(text: str) -> HostPort:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    text = text.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if not match:
        raise ValueError(f"{text!r} is not host:port")
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port < 65536:  # 0 picks a free port (tests); the bound one is logged
        raise ValueError(f"port {port} out of range 0-65535")
    return HostPort(host=host, port=port)


_BYTE_SIZE = re.compile(r"(\d+)\s*([kmg]i?b|b)?", re.IGNORECASE)
_BYTE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_byte_size(text: str) -> int:
    """A size in bytes: `1048576`, `512KiB`, `1MiB` (binary units), `1MB` (decimal), any case."""
    match = _BYTE_SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 1048576, 512KiB, 1MiB)")
    return int(match.group(1)) * _BYTE_UNITS[(match.group(2) or "b").lower()]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_dsn(text: str) -> str:
    text = text.strip()
    if not re.match(r"^postgres(ql)?(\+asyncpg)?://", text):
        raise ValueError("must be a postgres:// or postgresql:// URL")
    return text


# --- parsers with a rule on top, named for what the declarations say -----------------------


def positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError("must be greater than zero")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} out of range {low}-{high}")
        return value

    return check


def non_negative_number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"{value:g} must be zero or more")
    return value


def one_of(*options: str) -> Callable[[str], Any]:
    """One of `options`, case-insensitive. Typed `Any` so a field annotated with the matching
    `Literal` accepts it (mypy cannot derive a `Literal` from runtime strings)."""

    def check(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return check


def byte_size_in(low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = parse_byte_size(text)
        if not low <= value <= high:
            raise ValueError(f"{value} bytes is out of range {low}-{high}")
        return value

    return check


def host_ports(text: str) -> tuple[HostPort, ...]:
    return tuple(parse_host_port(item) for item in parse_list(text))


def secret_list(text: str) -> tuple[Secret, ...]:
    return tuple(Secret(item) for item in parse_list(text))


def secret_dsn(text: str) -> Secret:
    return Secret(parse_dsn(text))


def secret_dsns(text: str) -> tuple[Secret, ...]:
    return tuple(secret_dsn(item) for item in parse_list(text))


def sender(text: str) -> str:
    """The From / envelope sender, checked by the rules the MIME builder applies to it (the `From`
    address and the `Message-ID` domain), so a sender every delivery would fail on fails the start."""
    value = text.strip()
    try:
        ascii_address(value)
        make_message_id(value.rpartition("@")[2])
    except ValueError as exc:
        raise ValueError(f"{value!r} cannot be the From address: {exc}") from None
    return value


def single_line(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError("must not contain line breaks")
    return text


def acl_username(text: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("must be a Redis ACL user name: no spaces or control characters")
    return text


def non_empty(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def format_value(value: object) -> str:
    """A value as a variable would be written to give it: the inverse of the parsers above
    (`.env.example`, the README table). `None` and empty lists are the empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, tuple):
        return ",".join(format_value(item) for item in value)
    if isinstance(value, str | int | HostPort | Path):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    raise TypeError(f"no text form for {type(value).__name__}: add one to format_value")
