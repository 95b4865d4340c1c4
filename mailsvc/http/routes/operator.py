"""Operator routes (SPEC §3): delivery search and detail, resend, dead letters, malformed commands,
templates and the OpenAPI document. Thin: parse, call a service, shape the JSON.

Every read is cut at `MAIL_OPERATOR_REQUEST_TIMEOUT` (504 `timeout`); the database being
unreachable is a 503 with `Retry-After` (mapped in `app.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailsvc.domain.commands import Problem, ValidationFailed, valid_idempotency_key
from mailsvc.domain.operator_query import (
    Params,
    parse_dead_letter_query,
    parse_delivery_query,
    parse_include,
    parse_malformed_query,
    parse_operator_action_query,
    require_no_params,
)
from mailsvc.domain.redrive import parse_redrive_request
from mailsvc.http.bodies import read_body, read_json
from mailsvc.http.errors import ApiError, JsonResponse, not_found, validation_error
from mailsvc.http.guards import request_actor
from mailsvc.http.openapi import openapi_document
from mailsvc.http.operator_json import (
    attempt_json,
    dead_letter_json,
    detail_json,
    malformed_json,
    operator_action_json,
    summary_json,
    template_json,
)
from mailsvc.http.routes.intake import PREFIX
from mailsvc.services.operator_read import OperatorReadService
from mailsvc.services.redrive import RedriveService
from mailsvc.services.replay import ReplayService
from mailsvc.services.resend import ResendService

T = TypeVar("T")


def _params(request: Request) -> Params:
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    return params


def _parse(parse: Callable[[Params], T], request: Request) -> T:
    """The query parameters through `parse`; every problem at once as 422 `validation_failed`."""
    try:
        return parse(_params(request))
    except ValidationFailed as error:
        raise validation_error(error.problems) from None


def _delivery_id(request: Request) -> UUID:
    raw = request.path_params["delivery_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise not_found(f"no delivery {raw[:64]!r}") from None


def _optional_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not valid_idempotency_key(key):
        raise validation_error([Problem("Idempotency-Key", "must be 1-200 characters of A-Z a-z 0-9 . _ : -")])
    return key


def _replay_body(body: bytes) -> dict[str, Any]:
    """`{"payload"?, "idempotency_key"?}`; an empty body means the recorded payload and key."""
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise validation_error([Problem("", "body must be a JSON object")])
    problems = [Problem(str(name), "unknown field") for name in sorted(set(parsed) - {"payload", "idempotency_key"})]
    payload, key = parsed.get("payload"), parsed.get("idempotency_key")
    if payload is not None and not isinstance(payload, dict):
        problems.append(Problem("payload", "must be a send_email payload (an object)"))
    if key is not None and not (isinstance(key, str) and valid_idempotency_key(key)):
        problems.append(Problem("idempotency_key", "must be 1-200 characters of A-Z a-z 0-9 . _ : -"))
    if problems:
        raise validation_error(problems)
    return parsed


def operator_routes(
    reads: OperatorReadService,
    resends: ResendService,
    redrives: RedriveService,
    replays: ReplayService,
    *,
    read_timeout: float,
    max_body_bytes: int = 1024 * 1024,
) -> list[Route]:
    document = openapi_document()

    async def bounded(call: Awaitable[T]) -> T:
        """Run one read within the operator deadline (else 504); `NotFound` becomes 404."""
        deadline = asyncio.timeout(read_timeout)
        try:
            async with deadline:
                return await call
        except TimeoutError:
            if deadline.expired():
                raise ApiError(504, "timeout", f"the read did not finish within {read_timeout:g}s") from None
            raise

    async def list_deliveries(request: Request) -> Response:
        query, page = _parse(parse_delivery_query, request)
        found = await bounded(reads.deliveries(query, page))
        return JsonResponse({"items": [summary_json(d) for d in found.items], "next_cursor": found.next_cursor})

    async def get_delivery(request: Request) -> Response:
        delivery_id = _delivery_id(request)
        include_body = _parse(parse_include, request)
        return JsonResponse(detail_json(await bounded(reads.delivery(delivery_id, include_body=include_body))))

    async def list_attempts(request: Request) -> Response:
        delivery_id = _delivery_id(request)
        _parse(require_no_params, request)
        attempts = await bounded(reads.attempts(delivery_id))
        return JsonResponse({"items": [attempt_json(a) for a in attempts]})

    async def resend(request: Request) -> Response:
        delivery_id = _delivery_id(request)
        key = _optional_key(request)
        # domain errors: mapped in `http/errors.py`
        resent = await resends.resend(delivery_id, key, actor=request_actor(request.scope))
        accepted = resent.accepted
        body = {
            "delivery_id": str(accepted.delivery_id),
            "status": accepted.status,
            "resend_of": str(resent.resend_of),
            "idempotent_replay": accepted.idempotent_replay,
        }
        return JsonResponse(body, status_code=200 if accepted.idempotent_replay else 202)

    async def list_dead_letters(request: Request) -> Response:
        page = _parse(parse_dead_letter_query, request)
        found = await bounded(reads.dead_letters(page))
        return JsonResponse({"items": [dead_letter_json(d) for d in found.items], "next_cursor": found.next_cursor})

    async def redrive(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        key = _optional_key(request)
        try:
            parsed = parse_redrive_request(body)
        except ValidationFailed as error:
            raise validation_error(error.problems) from None
        answer = await redrives.redrive(parsed, actor=request_actor(request.scope), idempotency_key=key)
        counts = answer.counts
        return JsonResponse(
            {
                "action_id": None if answer.action_id is None else str(answer.action_id),
                "dry_run": answer.dry_run,
                "idempotent_replay": answer.idempotent_replay,
                "matched": counts.matched,
                "redriven": counts.redriven,
                "skipped": counts.skipped,
                "skipped_redacted": counts.skipped_redacted,
                "skipped_already_redriven": counts.skipped_already_redriven,
                "remaining": counts.remaining,
            }
        )

    async def replay(request: Request) -> Response:
        raw_id = request.path_params["malformed_id"]
        if not raw_id.isdigit() or len(raw_id) > 18:
            raise not_found(f"no malformed command {raw_id[:64]!r}")
        body = await read_body(request, max_body_bytes)
        parsed = _replay_body(body)
        replayed = await replays.replay(
            int(raw_id), parsed.get("payload"), parsed.get("idempotency_key"), actor=request_actor(request.scope)
        )
        accepted = replayed.accepted
        answer = {
            "delivery_id": str(accepted.delivery_id),
            "status": accepted.status,
            "malformed_id": replayed.malformed_id,
            "idempotent_replay": accepted.idempotent_replay,
        }
        return JsonResponse(answer, status_code=200 if accepted.idempotent_replay else 202)

    async def list_malformed(request: Request) -> Response:
        query, page = _parse(parse_malformed_query, request)
        found = await bounded(reads.malformed_commands(query, page))
        return JsonResponse({"items": [malformed_json(m) for m in found.items], "next_cursor": found.next_cursor})

    async def list_operator_actions(request: Request) -> Response:
        kind, page = _parse(parse_operator_action_query, request)
        found = await bounded(reads.operator_actions(kind, page))
        items = [operator_action_json(a) for a in found.items]
        return JsonResponse({"items": items, "next_cursor": found.next_cursor})

    async def list_templates(_: Request) -> Response:
        return JsonResponse({"items": [template_json(t) for t in reads.templates()]})

    async def openapi(_: Request) -> Response:
        return JsonResponse(document)

    return [
        Route(f"{PREFIX}/deliveries", list_deliveries, methods=["GET"], name="list_deliveries"),
        Route(f"{PREFIX}/deliveries/{{delivery_id}}", get_delivery, methods=["GET"], name="get_delivery"),
        Route(f"{PREFIX}/deliveries/{{delivery_id}}/attempts", list_attempts, methods=["GET"], name="list_attempts"),
        Route(f"{PREFIX}/deliveries/{{delivery_id}}/resend", resend, methods=["POST"], name="resend_delivery"),
        Route(f"{PREFIX}/dead-letters", list_dead_letters, methods=["GET"], name="list_dead_letters"),
        Route(f"{PREFIX}/dead-letters/redrive", redrive, methods=["POST"], name="redrive_dead_letters"),
        Route(
            f"{PREFIX}/malformed-commands/{{malformed_id}}/replay", replay, methods=["POST"], name="replay_malformed"
        ),
        Route(f"{PREFIX}/malformed-commands", list_malformed, methods=["GET"], name="list_malformed_commands"),
        Route(f"{PREFIX}/operator-actions", list_operator_actions, methods=["GET"], name="list_operator_actions"),
        Route(f"{PREFIX}/templates", list_templates, methods=["GET"], name="list_templates"),
        Route(f"{PREFIX}/openapi.json", openapi, methods=["GET"], name="openapi"),
    ]
