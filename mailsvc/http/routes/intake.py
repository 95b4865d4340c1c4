"""`POST /api/v1/internal/deliveries`: the auth service's door (SPEC §3)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailsvc.domain.commands import Problem, ValidationFailed, request_hash, valid_idempotency_key
from mailsvc.http.bodies import read_json
from mailsvc.http.errors import JsonResponse, validation_error
from mailsvc.services.acceptance import AcceptanceService

PREFIX = "/api/v1/internal"


def intake_routes(acceptance: AcceptanceService, max_body_bytes: int) -> list[Route]:
    async def submit(request: Request) -> Response:
        payload = await read_json(request, max_body_bytes)
        key = request.headers.get("idempotency-key")
        key_problem = None
        if key is None:
            key_problem = Problem("Idempotency-Key", "header is required")
        elif not valid_idempotency_key(key):
            key_problem = Problem("Idempotency-Key", "must be 1-200 characters of A-Z a-z 0-9 . _ : -")
        try:
            prepared = acceptance.prepare(
                source="auth", idempotency_key=key or "", payload=payload, digest=request_hash(payload)
            )
        except ValidationFailed as error:
            raise validation_error([p for p in (key_problem,) if p] + error.problems) from None
        except ValueError as error:
            raise validation_error([Problem("", str(error))]) from None
        if key_problem is not None:
            raise validation_error([key_problem])
        # a conflict (409), or a request invalid only because time passed with no original to replay
        # (422), propagates: `http/errors.py` maps domain errors
        accepted = await acceptance.persist_one(prepared)
        body = {
            "delivery_id": str(accepted.delivery_id),
            "status": accepted.status,
            "idempotent_replay": accepted.idempotent_replay,
        }
        return JsonResponse(body, status_code=200 if accepted.idempotent_replay else 202)

    return [Route(f"{PREFIX}/deliveries", submit, methods=["POST"], name="submit_delivery")]
