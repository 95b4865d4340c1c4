"""`GET /provider` and `POST /provider/resume` (SPEC §3, §12): the provider's pause, and the way out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailsvc.http.errors import JsonResponse
from mailsvc.http.guards import request_actor
from mailsvc.http.routes.intake import PREFIX
from mailsvc.services.provider import ProviderService


def provider_routes(provider: ProviderService) -> list[Route]:
    async def show(_: Request) -> Response:
        return JsonResponse((await provider.show()).json())

    async def resume(request: Request) -> Response:
        return JsonResponse((await provider.resume(actor=request_actor(request.scope))).json())

    return [
        Route(f"{PREFIX}/provider", show, methods=["GET"], name="get_provider"),
        Route(f"{PREFIX}/provider/resume", resume, methods=["POST"], name="resume_provider"),
    ]
