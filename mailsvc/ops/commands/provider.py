"""`mailsvc ops provider …`: the provider's pause and rate limit (SPEC §12), and the way out."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from mailsvc.ops.client import Api, Json
from mailsvc.ops.registry import Group

GROUP = Group("provider", "the SMTP provider's state: sending or paused, why, the rate limit")


def render_state(answer: Json, _: Namespace) -> str:
    state: dict[str, Any] = answer if isinstance(answer, dict) else {}
    rate = state.get("rate_limit")
    lines = [
        f"mode           {state.get('mode')}",
        f"state          {state.get('state')}",
        f"since          {state.get('since')}",
    ]
    if state.get("state") == "paused":
        lines += [f"reason         {state.get('reason')}", f"next probe at  {state.get('next_probe_at')}"]
    if isinstance(rate, dict):
        lines.append(f"rate limit     {rate.get('per_second'):g}/s (burst {rate.get('burst')})")
    else:
        lines.append("rate limit     none")
    return "\n".join(lines)


@GROUP.command(
    "show",
    summary="sending or paused, why and since when, the next probe, the rate limit",
    example="mailsvc ops provider show",
    render=render_state,
)
def show(api: Api, args: Namespace) -> Json:
    return api.get("/provider")


@GROUP.command(
    "resume",
    summary="resume sending now, without waiting for a probe (audited)",
    example="mailsvc ops provider resume",
    render=render_state,
)
def resume(api: Api, args: Namespace) -> Json:
    return api.post("/provider/resume")
