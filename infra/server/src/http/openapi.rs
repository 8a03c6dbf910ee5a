//! The OpenAPI 3.1 document served at `/openapi.json`. Its problem codes come from
//! [`ProblemCode`]; `tests/fixtures/openapi.json` pins the whole document byte for byte.

use allot_domain::Role;
use serde_json::{Value, json};

use super::problem::ProblemCode;

fn signed_headers() -> Value {
    json!([
        {"name": "Idempotency-Key", "in": "header", "required": true,
         "schema": {"type": "string", "maxLength": 255},
         "description": "Opaque token; a retry with the same key and payload replays the recorded outcome."},
        {"name": "Allot-Actor", "in": "header", "required": true, "schema": {"type": "string"}},
        {"name": "Allot-Signed-At", "in": "header", "required": true,
         "schema": {"type": "integer"}, "description": "Milliseconds since the Unix epoch."},
        {"name": "Allot-Signature", "in": "header", "required": true,
         "schema": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
         "description": "Hex ed25519 signature over the canonical bytes (docs/signing.md)."}
    ])
}

/// The headers of a signed read: the signature without an idempotency key.
fn read_headers() -> Value {
    let mut headers = signed_headers();
    if let Some(list) = headers.as_array_mut() {
        list.retain(|header| header["name"] != "Idempotency-Key");
    }
    headers
}

/// A signed read of `path_param`, answered by the role table (docs/roles.md).
fn read(summary: &str, path_param: &str, ok: &str) -> Value {
    let mut parameters = read_headers();
    if let Some(list) = parameters.as_array_mut() {
        list.push(json!({"name": path_param, "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    json!({
        "summary": summary,
        "description": "Signed (docs/signing.md, Reads). Another client's reservation is 404, as if it did not exist.",
        "parameters": parameters,
        "responses": {
            "200": {"description": ok},
            "400": {"$ref": "#/components/responses/Problem"},
            "401": {"$ref": "#/components/responses/Problem"},
            "403": {"$ref": "#/components/responses/Problem"},
            "404": {"$ref": "#/components/responses/Problem"},
            "503": {"$ref": "#/components/responses/Problem"}
        }
    })
}

fn command(summary: &str, path_param: &str, body: Option<Value>, created: bool) -> Value {
    let mut parameters = signed_headers();
    if let Some(list) = parameters.as_array_mut() {
        list.push(json!({"name": path_param, "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    let ok = if created { "201" } else { "200" };
    let mut operation = json!({
        "summary": summary,
        "parameters": parameters,
        "responses": {
            ok: {"description": "Recorded (or replayed, with Idempotent-Replayed: true)",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Outcome"}}}},
            "400": {"$ref": "#/components/responses/Problem"},
            "401": {"$ref": "#/components/responses/Problem"},
            "403": {"$ref": "#/components/responses/Problem"},
            "404": {"$ref": "#/components/responses/Problem"},
            "409": {"$ref": "#/components/responses/Problem"},
            "422": {"$ref": "#/components/responses/Problem"},
            "503": {"$ref": "#/components/responses/Problem"}
        }
    });
    if let (Some(body), Some(map)) = (body, operation.as_object_mut()) {
        map.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": body}}}),
        );
    }
    operation
}

/// The signed headers and the `receipts` query of a batch.
fn batch_parameters() -> Value {
    let mut parameters = signed_headers();
    if let Some(list) = parameters.as_array_mut() {
        list.push(json!({"name": "receipts", "in": "query", "required": false,
            "schema": {"type": "boolean", "default": false},
            "description": "true: each recorded command's result carries its receipt."}));
    }
    parameters
}

/// `POST /v1/batches`: many pool commands under one signature (docs/http.md, Batches).
fn batch() -> Value {
    let actions: Vec<&str> = allot_domain::ActionKind::ALL
        .into_iter()
        .map(allot_domain::ActionKind::as_str)
        .collect();
    json!({
        "summary": "submit a signed batch of pool commands",
        "description": "Signed once over the Merkle root of the commands (docs/signing.md, Batches); Idempotency-Key is the batch's key. Each command is decided as if it came alone; the answer has one result per command, in order.",
        "parameters": batch_parameters(),
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "object", "required": ["commands"], "additionalProperties": false,
            "properties": {"commands": {"type": "array", "minItems": 1,
                "maxItems": allot_domain::batch::BATCH_COMMANDS_MAX,
                "items": {"type": "object", "required": ["action", "token"], "additionalProperties": false,
                    "properties": {
                        "action": {"enum": actions},
                        "token": {"type": "string", "minLength": 1, "pattern": "^[\\t\\x20-\\x7e]+$",
                            "description": "1..=255 bytes of visible ASCII (an Idempotency-Key header's characters)"},
                        "pool_id": {"type": "string", "description": "declare_pool, adjust_capacity, close_pool, reserve"},
                        "reservation_id": {"type": "string", "description": "confirm/cancel/expire_reservation: pool:seq"},
                        "capacity": {"type": "integer"}, "closes_at": {"type": "integer"},
                        "units": {"type": "array", "items": {"type": "string"}},
                        "idempotency_window_ms": {"type": "integer"},
                        "resource": {"type": "string"}, "requester": {"type": "string"},
                        "duration_ms": {"type": "integer", "minimum": 1000, "maximum": 2_592_000_000u64},
                        "count": {"type": "integer", "minimum": 1, "default": 1}}}}}}}}},
        "responses": {
            "200": {"description": "One result per command, in order: the single route's body with its status, and replayed: true for a replay",
                "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/BatchResult"}}}}}}},
            "400": {"$ref": "#/components/responses/Problem"},
            "401": {"$ref": "#/components/responses/Problem"},
            "413": {"$ref": "#/components/responses/Problem"},
            "503": {"$ref": "#/components/responses/Problem"}
        }
    })
}

/// Lower-case hex of `bytes` bytes.
fn hex(bytes: usize) -> Value {
    json!({"type": "string", "pattern": format!("^[0-9a-f]{{{}}}$", bytes * 2)})
}

fn seal_schema() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["first_position", "event_count", "root", "prev_chain", "chain"],
        "description": "One group commit as the log chains it (docs/signing.md, Receipts).",
        "properties": {
            "first_position": {"type": "integer", "minimum": 0},
            "event_count": {"type": "integer", "minimum": 1},
            "root": hex(32), "prev_chain": hex(32), "chain": hex(32)}})
}

fn receipt_schema() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["format", "server", "server_key", "position", "stream", "version", "event_id",
                     "event_kind", "event_payload", "event_digest", "index", "count", "proof",
                     "seal", "signature"],
        "description": "Proof that the recorded event is in a sealed batch the server key signed; \
                        verify it offline (docs/signing.md, Receipts). Only in the answer that \
                        recorded the event, on the embedded store.",
        "properties": {
            "format": {"const": 1},
            "server": {"type": "string"}, "server_key": hex(32),
            "position": {"type": "integer", "minimum": 0},
            "stream": {"type": "string"}, "version": {"type": "integer", "minimum": 0},
            "event_id": hex(16), "event_kind": {"type": "string"},
            "event_payload": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
            "event_digest": hex(32),
            "index": {"type": "integer", "minimum": 0}, "count": {"type": "integer", "minimum": 1},
            "proof": {"type": "array", "items": hex(32)},
            "seal": {"$ref": "#/components/schemas/Seal"},
            "signature": hex(64)}})
}

fn signed_head_schema() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["format", "server", "server_key", "position", "seal", "signature"],
        "properties": {
            "format": {"const": 1},
            "server": {"type": "string"}, "server_key": hex(32),
            "position": {"type": "integer", "minimum": 0,
                         "description": "Events in the log after the batch: seal.first_position + seal.event_count."},
            "seal": {"$ref": "#/components/schemas/Seal"},
            "signature": hex(64)}})
}

/// `GET /v1/head`: a signed read with no path parameter.
fn head() -> Value {
    json!({
        "summary": "the signed head",
        "description": "Signed (docs/signing.md, Reads: read_head, empty target). The newest batch's seal, signed by the instance's server key. 404 on KurrentDB, which seals nothing.",
        "parameters": read_headers(),
        "responses": {
            "200": {"description": "The head",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SignedHead"}}}},
            "400": {"$ref": "#/components/responses/Problem"},
            "401": {"$ref": "#/components/responses/Problem"},
            "403": {"$ref": "#/components/responses/Problem"},
            "404": {"$ref": "#/components/responses/Problem"},
            "503": {"$ref": "#/components/responses/Problem"}
        }
    })
}

pub fn document() -> Value {
    let problem_codes: Vec<&str> = ProblemCode::all().map(ProblemCode::as_str).collect();
    let roles: Vec<&str> = Role::ALL.into_iter().map(Role::as_str).collect();
    let receipt_ref = json!({"$ref": "#/components/schemas/Receipt"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "allot", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Reservation ledger: capacity-gated holds that are confirmed, cancelled or expire."},
        "paths": {
            "/v1/pools/{pool}": {
                "post": command("declare_pool", "pool", Some(json!({"type": "object", "required": ["capacity"], "properties": {
                    "capacity": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000u64},
                    "closes_at": {"type": "integer", "description": "Cutoff (ms); reserve at or after it is pool-closed."},
                    "units": {"type": "array", "items": {"type": "string"}},
                    "idempotency_window_ms": {"type": "integer"}}})), true),
                "get": read("pool counts", "pool", "capacity, allocated, live reservations")
            },
            "/v1/pools/{pool}/capacity": {"post": command("adjust_capacity", "pool", Some(json!({"type": "object", "required": ["capacity"], "properties": {"capacity": {"type": "integer"}}})), false)},
            "/v1/pools/{pool}/close": {"post": command("close_pool", "pool", None, false)},
            "/v1/pools/{pool}/reservations": {"post": command("reserve", "pool", Some(json!({"type": "object", "required": ["resource", "requester", "duration_ms"], "properties": {
                "resource": {"type": "string"}, "requester": {"type": "string"},
                "duration_ms": {"type": "integer", "minimum": 1000, "maximum": 2_592_000_000u64},
                "count": {"type": "integer", "minimum": 1, "default": 1}}})), true)},
            "/v1/reservations/{reservation}": {"get": read("query_reservation", "reservation", "state, pool_id, slot_held, requester")},
            "/v1/reservations/{reservation}/confirm": {"post": command("confirm_reservation", "reservation", None, false)},
            "/v1/reservations/{reservation}/cancel": {"post": command("cancel_reservation", "reservation", None, false)},
            "/v1/reservations/{reservation}/expire": {"post": command("expire_reservation", "reservation", None, false)},
            "/v1/actors/{actor}": {"post": command("register_actor (admin)", "actor", Some(json!({"type": "object", "required": ["role", "public_key"], "properties": {
                "role": {"enum": roles}, "public_key": {"type": "string"}}})), false)},
            "/v1/actors/{actor}/revoke": {"post": command("revoke_actor (admin)", "actor", None, false)},
            "/v1/batches": {"post": batch()},
            "/v1/head": {"get": head()},
            "/healthz": {"get": {"summary": "liveness, and the log's health", "responses": {
                "200": {"description": "ok: {\"status\": \"ok\"}"},
                "503": {"description": "the background log verifier found acknowledged data damaged: {\"status\": \"log damaged\", \"damage\": \"<file, offset, first position, reason>\"} (docs/store.md, Fault model)"}}}}
        },
        "components": {
            "schemas": {
                "Outcome": {"type": "object", "properties": {
                    "outcome": {"type": "string"}, "reservation_id": {"type": "string"},
                    "pool_id": {"type": "string"}, "expires_at": {"type": "integer"},
                    "receipt": receipt_ref.clone()}},
                "Problem": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "code": {"enum": problem_codes},
                    "receipt": receipt_ref}},
                "BatchResult": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "integer"}, "replayed": {"type": "boolean"},
                    "outcome": {"type": "string"}, "reservation_id": {"type": "string"},
                    "pool_id": {"type": "string"}, "expires_at": {"type": "integer"},
                    "capacity": {"type": "integer"},
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "detail": {"type": "string"}, "code": {"enum": problem_codes.clone()},
                    "receipt": receipt_ref.clone()}},
                "Seal": seal_schema(),
                "Receipt": receipt_schema(),
                "SignedHead": signed_head_schema()
            },
            "responses": {"Problem": {"description": "RFC 9457 problem",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}}
        }
    })
}
