"""Sending-policy routes (SPEC §3, §12): the suppression list and cancelling a queued delivery.
Thin: parse, call `PolicyService`, shape the JSON; domain errors are mapped in `http/errors.py`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailsvc.domain.commands import Problem
from mailsvc.domain.operator_query import parse_suppression_query, require_no_params
from mailsvc.domain.suppression import Suppression, suppression_address
from mailsvc.http.bodies import read_json
from mailsvc.http.errors import JsonResponse, validation_error
from mailsvc.http.guards import request_actor
from mailsvc.http.operator_json import detail_json, timestamp
from mailsvc.http.routes.intake import PREFIX
from mailsvc.http.routes.operator import _delivery_id, _parse
from mailsvc.services.policy import PolicyService


def suppression_json(s: Suppression) -> dict[str, Any]:
    return {
        "address": s.address,
        "reason": s.reason,
        "delivery_id": None if s.delivery_id is None else str(s.delivery_id),
        "note": s.note,
        "created_at": timestamp(s.created_at),
        "expires_at": timestamp(s.expires_at),
    }


def _address(request: Request) -> str:
    """The path's address as the list stores it; 422 when it is no address."""
    raw = request.path_params["address"]  # percent-decoded by the router, once
    try:
        return suppression_address(raw)
    except ValueError as exc:
        raise validation_error([Problem("address", str(exc))]) from None


def policy_routes(policy: PolicyService, max_body_bytes: int) -> list[Route]:
    async def list_suppressions(request: Request) -> Response:
        reason, address, page = _parse(parse_suppression_query, request)
        found = await policy.list_suppressions(reason, address, page)
        return JsonResponse({"items": [suppression_json(s) for s in found.items], "next_cursor": found.next_cursor})

    async def get_suppression(request: Request) -> Response:
        address = _address(request)
        _parse(require_no_params, request)
        return JsonResponse(suppression_json(await policy.suppression(address)))

    async def put_suppression(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        actor = request_actor(request.scope)
        entry, created = await policy.put_suppression(request.path_params["address"], body, actor=actor)
        return JsonResponse(suppression_json(entry), status_code=201 if created else 200)

    async def delete_suppression(request: Request) -> Response:
        await policy.remove_suppression(_address(request), actor=request_actor(request.scope))
        return Response(status_code=204)

    async def cancel(request: Request) -> Response:
        delivery_id = _delivery_id(request)
        return JsonResponse(detail_json(await policy.cancel(delivery_id, actor=request_actor(request.scope))))

    return [
        Route(f"{PREFIX}/suppressions", list_suppressions, methods=["GET"], name="list_suppressions"),
        Route(f"{PREFIX}/suppressions/{{address:path}}", get_suppression, methods=["GET"], name="get_suppression"),
        Route(f"{PREFIX}/suppressions/{{address:path}}", put_suppression, methods=["PUT"], name="put_suppression"),
        Route(
            f"{PREFIX}/suppressions/{{address:path}}", delete_suppression, methods=["DELETE"], name="delete_suppression"
        ),
        Route(f"{PREFIX}/deliveries/{{delivery_id}}/cancel", cancel, methods=["POST"], name="cancel_delivery"),
    ]
