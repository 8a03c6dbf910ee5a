//! The canonical encoding of a command, which actors sign and whose parameter part is digested.
//!
//! Published format (version `allot-sig-v1`), so a client in any language can sign:
//!
//! ```text
//! "allot-sig-v1\n"
//! field("action", <action name, e.g. reserve>)
//! field("target", <pool id, or reservation id `pool:seq`>)
//! field("param." + name, value)   for each parameter, sorted by name
//! field("token", <idempotency token>)
//! field("actor", <actor id>)
//! field("signed_at", <milliseconds since the Unix epoch, decimal>)
//! ```
//!
//! where `field(name, value)` is `name ":" len ":" value "\n"` and `len` is the byte length of
//! the UTF-8 `value` in decimal. Length prefixes make the encoding unambiguous whatever the
//! values contain. The parameters digest is blake3 over `"allot-params-v1\n"` followed by the
//! `field("param." + name, value)` lines (computed at the edge; see `allot-infra`).

use crate::command::Action;
use crate::ids::{ActorId, IdempotencyToken, Timestamp};

pub const SIGNING_PREFIX: &str = "allot-sig-v1\n";
pub const PARAMS_PREFIX: &str = "allot-params-v1\n";

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

fn params(out: &mut Vec<u8>, action: &Action) {
    let mut params = action.canonical_params();
    params.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in params {
        field(out, &format!("param.{name}"), &value);
    }
}

/// The bytes whose blake3 hash is the parameters digest.
pub fn params_bytes(action: &Action) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(PARAMS_PREFIX.as_bytes());
    params(&mut out, action);
    out
}

/// The bytes an actor signs for a pool command. `target` is the pool id, or the reservation id
/// for confirm/cancel/expire.
pub fn signing_bytes(
    action: &Action,
    target: &str,
    token: &IdempotencyToken,
    actor: &ActorId,
    signed_at: Timestamp,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(SIGNING_PREFIX.as_bytes());
    field(&mut out, "action", action.kind().as_str());
    field(&mut out, "target", target);
    params(&mut out, action);
    field(&mut out, "token", token.as_str());
    field(&mut out, "actor", actor.as_str());
    field(&mut out, "signed_at", &signed_at.0.to_string());
    out
}

/// The bytes an admin signs to register or revoke an actor. `action` is `register_actor` or
/// `revoke_actor`; `params` are (name, value) pairs such as role and public_key (hex).
pub fn actor_signing_bytes(
    action: &str,
    target: &ActorId,
    params: &[(&str, String)],
    token: &IdempotencyToken,
    by: &ActorId,
    signed_at: Timestamp,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(SIGNING_PREFIX.as_bytes());
    field(&mut out, "action", action);
    field(&mut out, "target", target.as_str());
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in sorted {
        field(&mut out, &format!("param.{name}"), &value);
    }
    field(&mut out, "token", token.as_str());
    field(&mut out, "actor", by.as_str());
    field(&mut out, "signed_at", &signed_at.0.to_string());
    out
}
