"""JSON Schemas of every body the internal API takes or returns (OpenAPI 3.1 `components.schemas`).

Response objects are closed (`additionalProperties: false`), so the contract test catches any
field the code adds without documenting it here.
"""

from __future__ import annotations

from typing import Any

from mailsvc.domain.commands import MAX_HEADERS, MAX_RECIPIENTS, MAX_TAGS
from mailsvc.domain.events import EVENT_TYPES
from mailsvc.domain.operator_actions import ACTION_KINDS
from mailsvc.domain.operator_query import SOURCES, STATUSES

Schema = dict[str, Any]

TIMESTAMP: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC (`Z`)"}
OPT_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
UUID_STR: Schema = {"type": "string", "format": "uuid"}
OPT_STRING: Schema = {"type": ["string", "null"]}
OPT_INT: Schema = {"type": ["integer", "null"]}
STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def closed(properties: dict[str, Schema], *, optional: tuple[str, ...] = (), description: str = "") -> Schema:
    """An object with exactly these properties, all required but `optional`."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def page_of(item: str) -> Schema:
    return closed(
        {
            "items": {"type": "array", "items": ref(item)},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as `cursor` for the next (older) page; null on the last page",
            },
        }
    )


_ADDRESS: Schema = {
    "oneOf": [
        {"type": "string", "description": "an email address", "maxLength": 320},
        {
            "type": "object",
            "properties": {"email": {"type": "string", "maxLength": 320}, "name": {"type": "string", "maxLength": 200}},
            "required": ["email"],
            "additionalProperties": False,
        },
    ]
}

_RECIPIENT_LIST: Schema = {"type": "array", "items": ref("AddressInput"), "maxItems": MAX_RECIPIENTS}

SEND_EMAIL: Schema = {
    "type": "object",
    "description": (
        "The `send_email` payload (SPEC §2). Exactly one of `template` (with `variables`, optional `locale`) or raw "
        f"content (`subject` and `text`, optional `html`); 1-{MAX_RECIPIENTS} recipients in to/cc/bcc together. "
        "Rules a JSON Schema cannot express are checked too: every problem comes back in one 422."
    ),
    "properties": {
        "to": _RECIPIENT_LIST,
        "cc": _RECIPIENT_LIST,
        "bcc": _RECIPIENT_LIST,
        "reply_to": ref("AddressInput"),
        "template": {"type": "string", "pattern": r"^[a-z0-9_]+(\.[a-z0-9_]+)*$", "maxLength": 200},
        "locale": {"type": "string", "maxLength": 35, "examples": ["pt-BR"]},
        "variables": {"type": "object"},
        "subject": {"type": "string", "maxLength": 998},
        "text": {"type": "string"},
        "html": {"type": "string"},
        "priority": {"type": "string", "enum": ["high", "normal", "low"], "default": "normal"},
        "send_at": TIMESTAMP | {"description": "earliest attempt (default: now)"},
        "expires_at": TIMESTAMP | {"description": "no attempt starts after it; must be after send_at"},
        "headers": STRING_MAP
        | {"maxProperties": MAX_HEADERS, "propertyNames": {"pattern": "^X-"}, "description": "X-* headers only"},
        "tags": STRING_MAP | {"maxProperties": MAX_TAGS, "propertyNames": {"pattern": "^[^:]+$"}},
        "sensitive": {
            "type": "boolean",
            "description": "the content is a secret: redacted once the delivery is terminal (SPEC §13); for a "
            "template its manifest decides, and true here can only add redaction",
        },
        "collapse_key": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9._:-]{1,200}$",
            "description": "supersedes the queued deliveries of the same source and key (SPEC §12)",
        },
    },
    "additionalProperties": False,
}

_DELIVERY_FIELDS: dict[str, Schema] = {
    "delivery_id": UUID_STR,
    "source": {"type": "string", "enum": list(SOURCES)},
    "status": {"type": "string", "enum": list(STATUSES)},
    "template": OPT_STRING,
    "locale": OPT_STRING | {"description": "the locale actually rendered"},
    "template_digest": OPT_STRING | {"description": "hash of the exact template files used; null for raw content"},
    "priority": {"type": "string", "enum": ["high", "normal", "low"]},
    "send_at": TIMESTAMP,
    "expires_at": OPT_TIMESTAMP,
    "idempotency_key": {"type": "string"},
    "message_id": {"type": "string", "description": "RFC 5322 Message-ID, the same on every attempt"},
    "tags": STRING_MAP,
    "attempt_count": {"type": "integer", "minimum": 0},
    "next_attempt_at": OPT_TIMESTAMP,
    "last_error": OPT_STRING,
    "resend_of": {"type": ["string", "null"], "format": "uuid"},
    "created_at": TIMESTAMP,
    "updated_at": TIMESTAMP,
    "finished_at": OPT_TIMESTAMP | {"description": "set once the delivery reached a terminal status"},
    "to": {"type": "array", "items": {"type": "string"}, "description": "the `to` addresses, in order"},
    "recipient_count": {"type": "integer", "minimum": 0, "description": "to + cc + bcc"},
    "collapse_key": OPT_STRING | {"description": "a newer delivery with this (source, key) supersedes it"},
    "superseded_by": {"type": ["string", "null"], "format": "uuid", "description": "the delivery that superseded it"},
}

_ATTEMPT: Schema = closed(
    {
        "number": {"type": "integer", "minimum": 1},
        "started_at": TIMESTAMP,
        "finished_at": TIMESTAMP,
        "outcome": {
            "type": "string",
            "enum": ["sent", "transient_failure", "permanent_failure", "abandoned", "expired"],
        },
        "ambiguous": {"type": "boolean", "description": "the connection broke after the final '.' of DATA"},
        "smtp_code": OPT_INT,
        "smtp_reply": OPT_STRING,
        "error_class": OPT_STRING,
        "provider": {"type": ["string", "null"], "enum": ["smtp", "stub", None]},
        "duration_ms": {"type": "integer", "minimum": 0},
    }
)

_RECIPIENT: Schema = closed(
    {
        "kind": {"type": "string", "enum": ["to", "cc", "bcc"]},
        "address": {"type": "string"},
        "name": OPT_STRING,
        "outcome": {"type": ["string", "null"], "enum": ["accepted", "refused", "suppressed", None]},
        "smtp_code": OPT_INT,
        "smtp_reply": OPT_STRING,
    }
)

_DEAD_LETTER: Schema = closed(
    {
        "reason": {"type": "string", "enum": ["permanent_failure", "attempts_exhausted", "expired"]},
        "last_error": OPT_STRING,
        "created_at": TIMESTAMP,
    }
)

_DETAIL_FIELDS: dict[str, Schema] = {
    "subject": OPT_STRING | {"description": "the rendered subject"},
    "reply_to": {"oneOf": [{"type": "null"}, closed({"email": {"type": "string"}, "name": OPT_STRING})]},
    "headers": STRING_MAP,
    "recipients": {"type": "array", "items": ref("Recipient")},
    "attempts": {"type": "array", "items": ref("Attempt"), "description": "oldest first"},
    "dead_letter": {"oneOf": [{"type": "null"}, ref("DeadLetter")]},
    "resends": {"type": "array", "items": UUID_STR, "description": "ids of the deliveries that resent this one"},
    "sensitive": {"type": "boolean", "description": "the content is a secret, redacted once terminal (SPEC §13)"},
    "redacted": {"type": "boolean", "description": "the content was removed: no subject, no bodies"},
    "content_digest": {
        "oneOf": [
            {"type": "null"},
            closed(
                {
                    "redacted_at": TIMESTAMP,
                    "mime_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "mime_bytes": {"type": "integer", "minimum": 0},
                    "subject_bytes": {"type": "integer", "minimum": 0},
                    "text_bytes": {"type": "integer", "minimum": 0},
                    "html_bytes": OPT_INT,
                },
                description="what is kept of redacted content: the SHA-256 of the MIME message sent, and sizes",
            ),
        ]
    },
    "text_body": {"type": "string", "description": "only with ?include=body (never once redacted)"},
    "html_body": OPT_STRING | {"description": "only with ?include=body"},
}

SCHEMAS: dict[str, Schema] = {
    "Error": closed(
        {
            "error": closed(
                {
                    "code": {"type": "string", "description": "stable, machine-readable"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": ref("Problem")},
                },
                optional=("details",),
            )
        }
    ),
    "Problem": closed({"field": {"type": "string"}, "message": {"type": "string"}}),
    "AddressInput": _ADDRESS,
    "SendEmail": SEND_EMAIL,
    "Accepted": closed(
        {
            "delivery_id": UUID_STR,
            "status": {"type": "string", "enum": list(STATUSES)},
            "idempotent_replay": {"type": "boolean"},
        }
    ),
    "Resent": closed(
        {
            "delivery_id": UUID_STR | {"description": "the NEW delivery"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "resend_of": UUID_STR,
            "idempotent_replay": {"type": "boolean"},
        }
    ),
    "DeliveryItem": closed(_DELIVERY_FIELDS, description="a delivery as lists show it"),
    "Delivery": closed(
        _DELIVERY_FIELDS | _DETAIL_FIELDS,
        optional=("text_body", "html_body"),
        description="a delivery with its recipients, attempts, dead letter and resends",
    ),
    "Recipient": _RECIPIENT,
    "Attempt": _ATTEMPT,
    "DeadLetter": _DEAD_LETTER,
    "DeadLetterItem": closed(
        {
            "delivery_id": UUID_STR,
            "reason": _DEAD_LETTER["properties"]["reason"],
            "last_error": OPT_STRING,
            "created_at": TIMESTAMP,
            "source": {"type": "string", "enum": list(SOURCES)},
            "status": {"type": "string", "enum": list(STATUSES)},
            "template": OPT_STRING,
            "attempt_count": {"type": "integer", "minimum": 0},
            "to": {"type": "array", "items": {"type": "string"}},
        }
    ),
    "MalformedCommand": closed(
        {
            "malformed_id": {"type": "integer"},
            "stream_key": {"type": "string"},
            "stream_entry_id": {"type": "string"},
            "idempotency_key": OPT_STRING,
            "reason": {"type": "string", "examples": ["invalid_json", "validation_failed", "idempotency_conflict"]},
            "message": {"type": "string"},
            "raw_fields": {
                "type": "string",
                "description": "only with ?include=raw: the entry's fields as received (JSON, at most 64 KiB), "
                "decoded as UTF-8 with undecodable bytes replaced by U+FFFD; each value of `payload.variables` is "
                "masked as `***` (SPEC §13)",
            },
            "received_at": TIMESTAMP,
            "replayed_as": {
                "type": ["string", "null"],
                "format": "uuid",
                "description": "the delivery a replay made of it",
            },
            "replayed_at": OPT_TIMESTAMP,
        },
        optional=("raw_fields",),
    ),
    "Template": closed(
        {
            "id": {"type": "string"},
            "description": {"type": "string"},
            "default_locale": {"type": "string"},
            "locales": {"type": "array", "items": {"type": "string"}},
            "variables": {"type": "array", "items": {"type": "string"}},
            "required_variables": {"type": "array", "items": {"type": "string"}},
            "sensitive": {"type": "boolean", "description": "its deliveries are redacted once terminal (SPEC §13)"},
        }
    ),
    "Event": closed(
        {
            "specversion": {"type": "string", "const": "1.0"},
            "id": UUID_STR | {"description": "unique; the same on every re-publication"},
            "source": {"type": "string", "const": "mailsvc"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "time": TIMESTAMP,
            "subject": UUID_STR | {"description": "the delivery_id"},
            "datacontenttype": {"type": "string", "const": "application/json"},
            "data": {"type": "object", "description": "by type, SPEC §11"},
            "traceparent": OPT_STRING | {"description": "W3C traceparent of the delivery's trace"},
            "deliverysource": {"type": "string", "enum": list(SOURCES)},
            "idempotencykey": {"type": "string"},
            "tags": STRING_MAP,
        },
        description="A CloudEvents 1.0 event (structured JSON), as published to the event stream",
    ),
    "EventPage": closed(
        {
            "items": {"type": "array", "items": ref("Event")},
            "next_cursor": {"type": "string", "description": "pass as `after` to continue; always given"},
        }
    ),
    "Suppression": closed(
        {
            "address": {"type": "string", "description": "lower case, the domain in punycode"},
            "reason": {"type": "string", "enum": ["hard_bounce", "complaint", "manual"]},
            "delivery_id": {"type": ["string", "null"], "format": "uuid", "description": "the bounce that added it"},
            "note": OPT_STRING,
            "created_at": TIMESTAMP,
            "expires_at": OPT_TIMESTAMP | {"description": "null: until removed"},
        }
    ),
    "SuppressionInput": {
        "type": "object",
        "required": ["reason"],
        "properties": {
            "reason": {"type": "string", "enum": ["manual", "complaint"]},
            "note": {"type": ["string", "null"], "maxLength": 1000},
            "expires_at": {"type": ["string", "null"], "format": "date-time", "description": "in the future"},
        },
        "additionalProperties": False,
    },
    "SuppressionPage": page_of("Suppression"),
    "OperatorAction": closed(
        {
            "action_id": UUID_STR,
            "kind": {"type": "string", "enum": list(ACTION_KINDS)},
            "actor": {
                "type": "string",
                "pattern": "^(trusted-network|[0-9a-f]{12})$",
                "description": "first 12 hex digits of the SHA-256 of the bearer token, or `trusted-network`",
            },
            "target": {"type": ["object", "null"], "description": "what it acted on (ids)"},
            "filter": {"type": ["object", "null"], "description": "the selection of a bulk action"},
            "counts": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "integer"},
                "description": "what it did",
            },
            "note": OPT_STRING,
            "created_at": TIMESTAMP,
        },
        description="one operator write, recorded in the transaction that made it",
    ),
    "Provider": closed(
        {
            "mode": {"type": "string", "enum": ["stub", "smtp"], "description": "MAIL_SMTP_MODE"},
            "state": {
                "type": "string",
                "enum": ["sending", "paused"],
                "description": "paused: no replica claims work but one probe delivery per MAIL_PROVIDER_PROBE_INTERVAL",
            },
            "reason": {
                "type": ["string", "null"],
                "description": "why it paused: the error class and reply code (`auth_failed 535`, "
                "`sender_refused 530`, `tls_verify_failed`, `connect_failed`); null while sending",
            },
            "since": {**TIMESTAMP, "description": "when the state last changed"},
            "next_probe_at": {**OPT_TIMESTAMP, "description": "while paused: the earliest next probe"},
            "rate_limit": {
                "oneOf": [
                    {"type": "null"},
                    closed({"per_second": {"type": "number"}, "burst": {"type": "integer"}}),
                ],
                "description": "MAIL_SMTP_RATE_LIMIT and the bucket size, shared by every replica; null: unlimited",
            },
        },
        description="the SMTP provider's shared state (SPEC §12)",
    ),
    "OperatorActionPage": page_of("OperatorAction"),
    "RedriveRequest": {
        "type": "object",
        "properties": {
            "filter": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "enum": ["permanent_failure", "attempts_exhausted", "expired"]},
                    "source": {"type": "string", "enum": list(SOURCES)},
                    "template": {"type": "string", "pattern": r"^[a-z0-9_]+(\.[a-z0-9_]+)*$"},
                    "created_after": TIMESTAMP | {"description": "dead-lettered at or after"},
                    "created_before": TIMESTAMP | {"description": "dead-lettered before"},
                    "recipient_domain": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 253,
                        "pattern": "^[^@]+$",
                        "description": "any recipient at this domain (case-insensitive)",
                    },
                },
                "additionalProperties": False,
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
            "dry_run": {"type": "boolean", "default": False},
            "note": {"type": "string", "maxLength": 1000},
        },
        "additionalProperties": False,
    },
    "ReplayRequest": {
        "type": "object",
        "properties": {
            "payload": {"type": "object", "description": "a corrected `send_email` payload; default: the recorded one"},
            "idempotency_key": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._:-]{1,200}$",
                "description": "default: the recorded key (or the stream entry id)",
            },
        },
        "additionalProperties": False,
    },
    "Replayed": closed(
        {
            "delivery_id": UUID_STR,
            "status": {"type": "string", "enum": list(STATUSES)},
            "malformed_id": {"type": "integer"},
            "idempotent_replay": {"type": "boolean", "description": "an earlier replay's (or the key's) delivery"},
        }
    ),
    "RedriveResult": closed(
        {
            "action_id": {"type": ["string", "null"], "format": "uuid", "description": "null for a dry run"},
            "dry_run": {"type": "boolean"},
            "idempotent_replay": {"type": "boolean", "description": "the answer recorded for this Idempotency-Key"},
            "matched": {"type": "integer", "minimum": 0, "description": "dead letters the filter selects"},
            "redriven": {
                "type": "integer",
                "minimum": 0,
                "description": "resent now (a dry run: that would be), at most `limit`",
            },
            "skipped": {"type": "integer", "minimum": 0, "description": "skipped_redacted + skipped_already_redriven"},
            "skipped_redacted": {"type": "integer", "minimum": 0},
            "skipped_already_redriven": {"type": "integer", "minimum": 0},
            "remaining": {"type": "integer", "minimum": 0, "description": "redrivable, left for another run"},
        }
    ),
    "DeliveryPage": page_of("DeliveryItem"),
    "DeadLetterPage": page_of("DeadLetterItem"),
    "MalformedCommandPage": page_of("MalformedCommand"),
    "AttemptList": closed({"items": {"type": "array", "items": ref("Attempt")}}),
    "TemplateList": closed({"items": {"type": "array", "items": ref("Template")}}),
}
