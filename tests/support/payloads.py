"""`send_email` payloads (SPEC §2) as producers write them, before any encoding."""

from __future__ import annotations

from typing import Any


def raw_payload(*to: str, subject: str = "Hello", **fields: Any) -> dict[str, Any]:
    """A raw (non-templated) message to the addresses `to`, with any other fields given."""
    return {"to": list(to), "subject": subject, "text": "Hello there.\n", **fields}


def numbered_payload(n: int, **overrides: Any) -> dict[str, Any]:
    """Raw message number `n` (to userN@example.com, tagged n=N): many distinct ones from a counter."""
    payload: dict[str, Any] = {
        "to": [{"email": f"user{n}@example.com", "name": f"User {n}"}],
        "subject": f"Message {n}",
        "text": f"Hello number {n}",
        "tags": {"n": str(n)},
    }
    payload.update(overrides)
    return payload


def login_code_payload(n: int, locale: str = "pt-BR") -> dict[str, Any]:
    """The `auth.login_code` template for auth{n}@example.com, code `n` as six digits."""
    return {
        "to": [f"auth{n}@example.com"],
        "template": "auth.login_code",
        "locale": locale,
        "variables": {"code": f"{n:06d}", "expires_in_minutes": 10},
    }
