"""The OpenAPI 3.1 description of the internal API (`GET /api/v1/internal/openapi.json`).

Written by hand next to the routes it describes; `tests/integration/test_openapi_contract.py` keeps
it true by checking real responses against it.
"""

from __future__ import annotations

from typing import Any

from mailsvc.domain.commands import IDEMPOTENCY_KEY
from mailsvc.domain.events import EVENT_TYPES
from mailsvc.domain.operator_actions import ACTION_KINDS
from mailsvc.domain.operator_query import (
    DEFAULT_EVENT_LIMIT,
    DEFAULT_LIMIT,
    MAX_EVENT_LIMIT,
    MAX_LIMIT,
    SOURCES,
    STATUSES,
)
from mailsvc.http.openapi_schemas import SCHEMAS, TIMESTAMP, Schema, ref

PREFIX = "/api/v1/internal"
_KEY_PATTERN = f"^{IDEMPOTENCY_KEY.pattern}$"

_ERRORS: dict[str, tuple[str, str]] = {
    "400": ("invalid_json", "the body is not JSON (or `Content-Length` is not a number: `invalid_request`)"),
    "401": ("unauthorized", "bearer token missing or unknown (only when tokens are configured)"),
    "403": ("forbidden", "an intake token used on an operator route"),
    "404": ("not_found", "unknown (or malformed) delivery id"),
    "409": ("idempotency_key_conflict", "see the operation for the codes"),
    "413": ("payload_too_large", "body over MAIL_INTERNAL_HTTP_MAX_BODY_BYTES (1 MiB)"),
    "422": ("validation_failed", "`details` lists every problem found"),
    "503": ("unavailable", "PostgreSQL unreachable, or too many requests in flight; retry after `Retry-After`"),
    "504": ("timeout", "the read took longer than MAIL_OPERATOR_REQUEST_TIMEOUT"),
}


def _error(status: str, description: str | None = None) -> dict[str, Any]:
    code, default = _ERRORS[status]
    response: dict[str, Any] = {
        "description": f"`{code}`: {description or default}",
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if status == "503":
        response["headers"] = {"Retry-After": {"required": True, "schema": {"type": "string"}}}
    if status == "401":
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def _query(name: str, schema: Schema, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


_DELIVERY_ID = {
    "name": "delivery_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "a delivery id; anything that is not a known delivery id is a 404",
}
_ADDRESS = {
    "name": "address",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "an email address; compared case-insensitively, the domain in Unicode or punycode",
}
_PAGE = [
    _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "page size",
    ),
    _query(
        "cursor",
        {"type": "string", "minLength": 1},
        "`next_cursor` of the previous page (opaque; only valid for the list that returned it)",
    ),
]
_DELIVERY_FILTERS = [
    _query("status", {"type": "string", "enum": list(STATUSES)}, "one status"),
    _query("source", {"type": "string", "enum": list(SOURCES)}, "one source"),
    _query("template", {"type": "string", "pattern": r"^[a-z0-9_]+(\.[a-z0-9_]+)*$"}, "template id"),
    _query(
        "recipient",
        {"type": "string", "minLength": 3, "maxLength": 320, "pattern": "^[^@]+@[^@]+$"},
        "an address in to, cc or bcc; exact match, case-insensitive",
    ),
    _query(
        "tag",
        {"type": "array", "maxItems": 16, "items": {"type": "string", "pattern": "^[^:]{1,64}:.*$"}},
        "`key:value`; repeat for several (AND); each key at most once",
        style="form",
        explode=True,
    ),
    _query("created_after", TIMESTAMP, "created at or after (inclusive)"),
    _query("created_before", TIMESTAMP, "created before (exclusive)"),
]
_READ_ERRORS = {status: _error(status) for status in ("401", "403", "422", "503", "504")}


def _paths() -> dict[str, Any]:
    return {
        f"{PREFIX}/deliveries": {
            "post": {
                "operationId": "submitDelivery",
                "summary": "Submit a delivery (auth intake, source `auth`)",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": _KEY_PATTERN},
                        "description": "scope (auth, key); within MAIL_IDEMPOTENCY_TTL a repeat replays",
                    }
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("SendEmail")}}},
                "responses": {
                    "202": _ok("Accepted", "accepted: queued, or suppressed in stub mode"),
                    "200": _ok("Accepted", "a replay of the same key and body: the original delivery"),
                    "400": _error("400"),
                    "401": _error("401"),
                    "409": _error("409", "`idempotency_key_conflict`: the key was used with another body"),
                    "413": _error("413"),
                    "422": _error("422"),
                    "503": _error("503"),
                },
            },
            "get": {
                "operationId": "listDeliveries",
                "summary": "Find deliveries, newest first (filters combine with AND)",
                "parameters": [*_DELIVERY_FILTERS, *_PAGE],
                "responses": {"200": _ok("DeliveryPage", "one page"), **_READ_ERRORS},
            },
        },
        f"{PREFIX}/deliveries/{{delivery_id}}": {
            "get": {
                "operationId": "getDelivery",
                "summary": "One delivery: recipients with outcomes, attempts, dead letter, resend links",
                "parameters": [
                    _DELIVERY_ID,
                    _query("include", {"type": "string", "enum": ["body"]}, "`body` adds text_body and html_body"),
                ],
                "responses": {"200": _ok("Delivery", "the delivery"), "404": _error("404"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/deliveries/{{delivery_id}}/attempts": {
            "get": {
                "operationId": "listAttempts",
                "summary": "A delivery's attempts, oldest first",
                "parameters": [_DELIVERY_ID],
                "responses": {"200": _ok("AttemptList", "the attempts"), "404": _error("404"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/deliveries/{{delivery_id}}/resend": {
            "post": {
                "operationId": "resendDelivery",
                "summary": "Send a finished delivery again as a new delivery (source `resend`, new Message-ID)",
                "description": "The stored rendered payload is reused; the new delivery has no expiry and goes "
                "through normal scheduling. Without Idempotency-Key every call creates a new delivery.",
                "parameters": [
                    _DELIVERY_ID,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": _KEY_PATTERN},
                        "description": "scope (resend, key): a repeat for the same delivery replays the first resend",
                    },
                ],
                "responses": {
                    "202": _ok("Resent", "the new delivery"),
                    "200": _ok("Resent", "a replay: the delivery created by the first call with this key"),
                    "401": _error("401"),
                    "403": _error("403"),
                    "404": _error("404"),
                    "409": _error(
                        "409",
                        "`not_resendable` (the delivery is not in a terminal status), `content_redacted` (it was "
                        "sensitive: its content was removed when it finished) or `idempotency_key_conflict` "
                        "(the key was used to resend another delivery)",
                    ),
                    "422": _error("422", "invalid Idempotency-Key"),
                    "503": _error("503"),
                },
            }
        },
        f"{PREFIX}/events": {
            "get": {
                "operationId": "listEvents",
                "summary": "The delivery event feed (CloudEvents), oldest first",
                "description": "The events the publisher writes to MAIL_REDIS_EVENT_STREAM, from PostgreSQL, with the "
                "same visibility horizon: an event appears once no transaction that could precede it is open, so "
                "polling with `next_cursor` never skips one. `next_cursor` is always given.",
                "parameters": [
                    _query(
                        "after",
                        {"type": "string", "minLength": 1},
                        "`next_cursor` of the previous call (opaque); absent: from the oldest event kept",
                    ),
                    _query("delivery_id", {"type": "string", "format": "uuid"}, "one delivery's events"),
                    _query(
                        "type",
                        {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
                        "event types; repeat for several (OR)",
                        style="form",
                        explode=True,
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_EVENT_LIMIT, "default": DEFAULT_EVENT_LIMIT},
                        "page size",
                    ),
                ],
                "responses": {"200": _ok("EventPage", "the next events (perhaps none)"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/deliveries/{{delivery_id}}/cancel": {
            "post": {
                "operationId": "cancelDelivery",
                "summary": "Cancel a queued delivery (SPEC §12): it becomes `cancelled` and is never sent",
                "description": "Race-free against the scheduler: a delivery being claimed is either cancelled "
                "(never sent) or sent (not cancelled).",
                "parameters": [_DELIVERY_ID],
                "responses": {
                    "200": _ok("Delivery", "the cancelled delivery"),
                    "401": _error("401"),
                    "403": _error("403"),
                    "404": _error("404"),
                    "409": _error("409", "`not_cancellable`: the delivery is being sent, or it is finished"),
                    "503": _error("503"),
                },
            }
        },
        f"{PREFIX}/suppressions": {
            "get": {
                "operationId": "listSuppressions",
                "summary": "The suppression list, newest first (expired entries are not shown)",
                "parameters": [
                    _query("reason", {"type": "string", "enum": ["hard_bounce", "complaint", "manual"]}, "one reason"),
                    _query("address", {"type": "string", "minLength": 1}, "one address (any case, IDN in Unicode)"),
                    *_PAGE,
                ],
                "responses": {"200": _ok("SuppressionPage", "one page"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/suppressions/{{address}}": {
            "parameters": [_ADDRESS],
            "get": {
                "operationId": "getSuppression",
                "summary": "The entry in force for one address",
                "responses": {
                    "200": _ok("Suppression", "the entry"),
                    "404": _error("404", "the address is not suppressed"),
                    **_READ_ERRORS,
                },
            },
            "put": {
                "operationId": "putSuppression",
                "summary": "Suppress an address (reason manual or complaint), or replace its entry",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("SuppressionInput")}},
                },
                "responses": {
                    "201": _ok("Suppression", "a new entry"),
                    "200": _ok("Suppression", "the entry in force was replaced"),
                    "400": _error("400"),
                    "404": _error("404", "no route: the address holds a line break"),
                    "413": _error("413"),
                    **_READ_ERRORS,
                },
            },
            "delete": {
                "operationId": "deleteSuppression",
                "summary": "Remove an address from the suppression list",
                "responses": {
                    "204": {"description": "removed"},
                    "404": _error("404", "the address is not suppressed"),
                    **_READ_ERRORS,
                },
            },
        },
        f"{PREFIX}/dead-letters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Dead-lettered deliveries, newest first",
                "parameters": _PAGE,
                "responses": {"200": _ok("DeadLetterPage", "one page"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/dead-letters/redrive": {
            "post": {
                "operationId": "redriveDeadLetters",
                "summary": "Resend the dead letters a filter selects, each at most once across redrives (audited)",
                "description": "Oldest first, in bounded batches (each its own transaction), at most `limit`. Redacted "
                "(sensitive) dead letters and those an earlier redrive resent are skipped and counted. `dry_run` only "
                "counts and records nothing.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": _KEY_PATTERN},
                        "description": "a retry with the same key and body answers with the first answer",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("RedriveRequest")}},
                },
                "responses": {
                    "200": _ok("RedriveResult", "what was (or, with dry_run, would be) redriven"),
                    "400": _error("400"),
                    "401": _error("401"),
                    "403": _error("403"),
                    "409": _error("409", "`idempotency_key_conflict`: the key answered another request"),
                    "413": _error("413"),
                    "422": _error("422"),
                    "503": _error("503"),
                },
            }
        },
        f"{PREFIX}/malformed-commands/{{malformed_id}}/replay": {
            "post": {
                "operationId": "replayMalformedCommand",
                "summary": "Accept a malformed stream command again, as recorded or with a corrected payload",
                "description": "Acceptance as for the stream (source `notification`). The malformed row records the "
                "delivery it became; a second replay answers with that delivery.",
                "parameters": [
                    {
                        "name": "malformed_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                        "description": "`malformed_id` of GET /malformed-commands",
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("ReplayRequest")}},
                },
                "responses": {
                    "202": _ok("Replayed", "accepted as a new delivery"),
                    "200": _ok("Replayed", "replayed before (or its key held this request): that delivery"),
                    "400": _error("400"),
                    "401": _error("401"),
                    "403": _error("403"),
                    "404": _error("404", "no such malformed command"),
                    "409": _error("409", "`idempotency_key_conflict`: the key holds another request"),
                    "413": _error("413"),
                    "422": _error("422", "every problem of the payload (or the record cannot be replayed as is)"),
                    "503": _error("503"),
                },
            }
        },
        f"{PREFIX}/malformed-commands": {
            "get": {
                "operationId": "listMalformedCommands",
                "summary": "Stream commands that could never succeed, newest first",
                "parameters": [
                    _query("reason", {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"}, "one reason code"),
                    _query(
                        "include",
                        {"type": "string", "enum": ["raw"]},
                        "`raw` adds raw_fields (with `payload.variables` masked)",
                    ),
                    *_PAGE,
                ],
                "responses": {"200": _ok("MalformedCommandPage", "one page"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/operator-actions": {
            "get": {
                "operationId": "listOperatorActions",
                "summary": "The audit trail of operator writes, newest first",
                "parameters": [_query("kind", {"type": "string", "enum": list(ACTION_KINDS)}, "one kind"), *_PAGE],
                "responses": {"200": _ok("OperatorActionPage", "one page"), **_READ_ERRORS},
            }
        },
        f"{PREFIX}/provider": {
            "get": {
                "operationId": "getProvider",
                "summary": "The provider's state: sending or paused, why and since when, the rate limit",
                "responses": {
                    "200": _ok("Provider", "the state shared by every replica"),
                    **{s: _error(s) for s in ("401", "403", "503")},
                },
            }
        },
        f"{PREFIX}/provider/resume": {
            "post": {
                "operationId": "resumeProvider",
                "summary": "Resume sending now (audited as a `provider_resume` operator action)",
                "description": "A paused provider sends again at once, without waiting for a probe; one "
                "already sending is left as it is. Either way the call is recorded in the operator actions.",
                "responses": {
                    "200": _ok("Provider", "the state after"),
                    **{s: _error(s) for s in ("401", "403", "503")},
                },
            }
        },
        f"{PREFIX}/templates": {
            "get": {
                "operationId": "listTemplates",
                "summary": "The template catalog: ids, locales, declared variables, sensitive",
                "responses": {
                    "200": _ok("TemplateList", "every template"),
                    **{s: _error(s) for s in ("401", "403", "503")},
                },
            }
        },
        f"{PREFIX}/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **{s: _error(s) for s in ("401", "403", "503")},
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailsvc internal API",
            "version": "1",
            "description": "Auth intake and operator API of the mail service. JSON in, JSON out; every error is "
            '`{"error": {"code", "message", "details"?}}` with a stable code. When tokens are configured, '
            "requests need `Authorization: Bearer <token>`: intake tokens may only submit deliveries.",
        },
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
