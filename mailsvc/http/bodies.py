"""Reading request bodies within the size limit, and JSON in/out."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from mailsvc.http.errors import ApiError


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    # the protocol hands over a complete body in one piece, which `join` returns without a copy
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
