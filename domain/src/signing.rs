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
//! values contain. The parameters digest ([`params_digest`]) is blake3 over
//! `"allot-params-v1\n"` followed by the `field("param." + name, value)` lines.
//!
//! An actor change (register or revoke) is signed in the same shape: action `register_actor`
//! (parameters `public_key` in lowercase hex and `role`) or `revoke_actor` (none), target the
//! actor changed, `actor` the admin ([`actor_change_params`]).
//!
//! The service checks signatures with these functions and the audit checks the recorded log
//! with the same ones, so both agree byte for byte.

use crate::actor::{ActorChange, ActorEvent};
use crate::command::{Action, ParamValue};
use crate::ids::{
    ActorId, IdempotencyToken, ParamsDigest, PoolId, RESERVATION_ID_SEPARATOR, Timestamp,
};

/// How far a request's `signed_at` may be from the server's clock, either way. Far shorter than
/// any pool's idempotency window (see `command::IDEMPOTENCY_WINDOW_MS_MIN`), so a captured
/// request sent again later either replays its recorded outcome or is refused as stale: it
/// cannot become a second action.
pub const SIGNED_AT_SKEW_MS: u64 = 120_000;

/// Whether `signed_at` is within [`SIGNED_AT_SKEW_MS`] of `now`, either way.
pub fn signed_at_within_skew(signed_at: Timestamp, now: Timestamp) -> bool {
    signed_at.0.abs_diff(now.0) <= SIGNED_AT_SKEW_MS
}

pub const SIGNING_PREFIX: &str = "allot-sig-v1\n";
pub const PARAMS_PREFIX: &str = "allot-params-v1\n";

/// Bytes of the longest `u64` in decimal.
const DECIMAL_BYTES_MAX: usize = 20;

/// `n` in decimal, written into `buf`, without allocating.
fn decimal(n: u64, buf: &mut [u8; DECIMAL_BYTES_MAX]) -> &[u8] {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// `name ":" len ":" value "\n"`, where `name` is the concatenation of `name_parts`.
fn field(out: &mut Vec<u8>, name_parts: &[&str], value: ParamValue<'_>) {
    let mut number = [0u8; DECIMAL_BYTES_MAX];
    let mut length = [0u8; DECIMAL_BYTES_MAX];
    for part in name_parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b":");
    match value {
        ParamValue::Text(text) => {
            out.extend_from_slice(decimal(text.len() as u64, &mut length));
            out.extend_from_slice(b":");
            out.extend_from_slice(text.as_bytes());
        }
        ParamValue::Number(n) | ParamValue::OptionalNumber(Some(n)) => {
            let digits = decimal(n, &mut number);
            out.extend_from_slice(decimal(digits.len() as u64, &mut length));
            out.extend_from_slice(b":");
            out.extend_from_slice(digits);
        }
        ParamValue::OptionalNumber(None) => out.extend_from_slice(b"0:"),
        ParamValue::Joined(texts) => {
            let separators = texts.len().saturating_sub(1);
            let len = texts.iter().map(String::len).sum::<usize>() + separators;
            out.extend_from_slice(decimal(len as u64, &mut length));
            out.extend_from_slice(b":");
            for (i, text) in texts.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\x1f");
                }
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\n");
}

/// `name ":" len ":" value "\n"`: one field of the canonical encodings (also of batches).
pub fn write_field(out: &mut Vec<u8>, name: &str, value: ParamValue<'_>) {
    field(out, &[name], value);
}

fn text_field(out: &mut Vec<u8>, name: &str, value: &str) {
    field(out, &[name], ParamValue::Text(value));
}

fn params(out: &mut Vec<u8>, action: &Action) {
    action.canonical_params(|name, value| field(out, &["param.", name], value));
}

/// The bytes whose blake3 hash is the parameters digest.
pub fn params_bytes(action: &Action) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(PARAMS_PREFIX.as_bytes());
    params(&mut out, action);
    out
}

/// The parameters digest: blake3 over [`params_bytes`]. A token is bound to it, so reusing a
/// token with other parameters is a collision, not a replay.
pub fn params_digest(action: &Action) -> ParamsDigest {
    ParamsDigest(*blake3::hash(&params_bytes(action)).as_bytes())
}

/// The target a pool command is signed over: the pool id, or the reservation id `pool:seq` for
/// the actions that name a reservation.
pub fn command_target(pool: &PoolId, action: &Action) -> String {
    match action.reservation() {
        Some(seq) => format!("{pool}{RESERVATION_ID_SEPARATOR}{seq}"),
        None => pool.to_string(),
    }
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
    text_field(&mut out, "action", action.kind().as_str());
    text_field(&mut out, "target", target);
    params(&mut out, action);
    text_field(&mut out, "token", token.as_str());
    text_field(&mut out, "actor", actor.as_str());
    field(&mut out, &["signed_at"], ParamValue::Number(signed_at.0));
    out
}

/// The action name and (name, value) parameters an admin signs for an actor change, in
/// ascending name order: the input of [`actor_signing_bytes`].
pub fn actor_change_params(change: &ActorChange) -> (&'static str, Vec<(&'static str, String)>) {
    let params = match change {
        ActorChange::Registered { role, public_key } => vec![
            ("public_key", hex::encode(public_key)),
            ("role", role.as_str().to_owned()),
        ],
        ActorChange::Revoked => vec![],
    };
    (change.action_name(), params)
}

/// The bytes an admin signs to register or revoke an actor. `action` and `params` are what
/// [`actor_change_params`] gives for the change; `params` are written sorted by name.
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
    text_field(&mut out, "action", action);
    text_field(&mut out, "target", target.as_str());
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in sorted {
        field(&mut out, &["param.", name], ParamValue::Text(&value));
    }
    text_field(&mut out, "token", token.as_str());
    text_field(&mut out, "actor", by.as_str());
    field(&mut out, &["signed_at"], ParamValue::Number(signed_at.0));
    out
}

/// A signed read: what is read. Reads sign the same canonical shape as commands, with no
/// parameters and an empty token (a read changes nothing, so it has no idempotency key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// `GET /v1/pools/{pool}`: target the pool id.
    Pool,
    /// `GET /v1/reservations/{id}`: target the reservation id `pool:seq`.
    Reservation,
    /// `GET /v1/head`: target empty.
    Head,
}

impl Read {
    /// The action name signed.
    pub fn as_str(self) -> &'static str {
        match self {
            Read::Pool => "read_pool",
            Read::Reservation => "read_reservation",
            Read::Head => "read_head",
        }
    }
}

/// The bytes an actor signs for a read of `target`.
pub fn read_signing_bytes(
    read: Read,
    target: &str,
    actor: &ActorId,
    signed_at: Timestamp,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(SIGNING_PREFIX.as_bytes());
    text_field(&mut out, "action", read.as_str());
    text_field(&mut out, "target", target);
    text_field(&mut out, "token", "");
    text_field(&mut out, "actor", actor.as_str());
    field(&mut out, &["signed_at"], ParamValue::Number(signed_at.0));
    out
}

/// The bytes the admin `by` signed for a recorded actor event.
pub fn actor_event_signing_bytes(event: &ActorEvent) -> Vec<u8> {
    let (action, params) = actor_change_params(&event.change);
    actor_signing_bytes(
        action,
        &event.actor,
        &params,
        &event.token,
        &event.by,
        event.attestation.signed_at,
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The published encoding written the plain way (a string per value), to check the
    /// allocation-free one against.
    fn reference_params(action: &Action) -> Vec<u8> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        action.canonical_params(|name, value| {
            let text = match value {
                ParamValue::Text(text) => text.to_owned(),
                ParamValue::Number(n) => n.to_string(),
                ParamValue::OptionalNumber(n) => n.map(|n| n.to_string()).unwrap_or_default(),
                ParamValue::Joined(texts) => texts.join("\u{1f}"),
            };
            pairs.push((name, text));
        });
        assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "parameters are visited in ascending name order: {pairs:?}"
        );
        let mut out = PARAMS_PREFIX.as_bytes().to_vec();
        for (name, value) in pairs {
            out.extend_from_slice(format!("param.{name}:{}:{value}\n", value.len()).as_bytes());
        }
        out
    }

    fn any_action() -> impl Strategy<Value = Action> {
        let text = ".{0,12}";
        prop_oneof![
            (
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                proptest::collection::vec(text, 0..4),
                any::<u64>()
            )
                .prop_map(|(capacity, closes_at, units, idempotency_window_ms)| {
                    Action::DeclarePool {
                        capacity,
                        closes_at: closes_at.map(Timestamp),
                        units,
                        idempotency_window_ms,
                    }
                }),
            any::<u64>().prop_map(|capacity| Action::AdjustCapacity { capacity }),
            Just(Action::ClosePool),
            (text, text, any::<u64>(), any::<u32>()).prop_map(
                |(resource, requester, duration_ms, count)| Action::Reserve {
                    resource,
                    requester,
                    duration_ms,
                    count,
                }
            ),
            any::<u64>().prop_map(|reservation| Action::ConfirmReservation { reservation }),
            any::<u64>().prop_map(|reservation| Action::CancelReservation { reservation }),
            any::<u64>().prop_map(|reservation| Action::ExpireReservation { reservation }),
        ]
    }

    proptest! {
        #[test]
        fn params_are_written_as_published(action in any_action()) {
            prop_assert_eq!(params_bytes(&action), reference_params(&action));
        }
    }

    #[test]
    fn the_published_bytes_do_not_change() {
        let reserve = Action::Reserve {
            resource: "seat".into(),
            requester: "r1".into(),
            duration_ms: 600_000,
            count: 2,
        };
        assert_eq!(
            params_bytes(&reserve),
            b"allot-params-v1\nparam.count:1:2\nparam.duration_ms:6:600000\n\
              param.requester:2:r1\nparam.resource:4:seat\n"
        );
        let declare = Action::DeclarePool {
            capacity: 10,
            closes_at: None,
            units: vec!["a".into(), "bc".into()],
            idempotency_window_ms: 0,
        };
        assert_eq!(
            params_bytes(&declare),
            b"allot-params-v1\nparam.capacity:2:10\nparam.closes_at:0:\n\
              param.idempotency_window_ms:1:0\nparam.units:4:a\x1fbc\n"
        );
        for (action, params) in [
            (
                Action::AdjustCapacity { capacity: 0 },
                &b"param.capacity:1:0\n"[..],
            ),
            (Action::ClosePool, b""),
            (
                Action::CancelReservation {
                    reservation: u64::MAX,
                },
                b"param.reservation:20:18446744073709551615\n",
            ),
            (
                Action::ExpireReservation { reservation: 12 },
                b"param.reservation:2:12\n",
            ),
            (
                Action::DeclarePool {
                    capacity: 3,
                    closes_at: Some(Timestamp(1_700_000_000_000)),
                    units: vec![],
                    idempotency_window_ms: 60_000,
                },
                b"param.capacity:1:3\nparam.closes_at:13:1700000000000\n\
                  param.idempotency_window_ms:5:60000\nparam.units:0:\n",
            ),
        ] {
            assert_eq!(
                params_bytes(&action),
                [PARAMS_PREFIX.as_bytes(), params].concat()
            );
        }
        let signed = signing_bytes(
            &Action::ConfirmReservation { reservation: 7 },
            "p:7",
            &IdempotencyToken::new("t"),
            &ActorId::new("alice"),
            Timestamp(1_700_000_000_000),
        );
        assert_eq!(
            signed,
            b"allot-sig-v1\naction:19:confirm_reservation\ntarget:3:p:7\n\
              param.reservation:1:7\ntoken:1:t\nactor:5:alice\nsigned_at:13:1700000000000\n"
        );
        let admin = actor_signing_bytes(
            "revoke_actor",
            &ActorId::new("bob"),
            &[("role", "holder".into())],
            &IdempotencyToken::new("t2"),
            &ActorId::new("admin"),
            Timestamp(5),
        );
        assert_eq!(
            admin,
            b"allot-sig-v1\naction:12:revoke_actor\ntarget:3:bob\nparam.role:6:holder\n\
              token:2:t2\nactor:5:admin\nsigned_at:1:5\n"
        );
    }

    /// The digests published in `docs/signing.md`.
    #[test]
    fn the_published_digests_and_targets_do_not_change() {
        let reserve = Action::Reserve {
            resource: "vip-tier".into(),
            requester: "buyer_a".into(),
            duration_ms: 600_000,
            count: 1,
        };
        let confirm = Action::ConfirmReservation { reservation: 1 };
        let declare = Action::DeclarePool {
            capacity: 30,
            closes_at: Some(Timestamp(1_767_229_200_000)),
            units: vec![],
            idempotency_window_ms: 3_600_000,
        };
        for (action, digest) in [
            (
                &reserve,
                "967630b017df719df01ad1953a9ebbd70a88bb167ce534b08e263a5092683a52",
            ),
            (
                &confirm,
                "b37ecc6fe2ed8118ea61fa4a5debf2fa950c8b38eee554f69870c139ac202b5c",
            ),
            (
                &declare,
                "36476be75de55ccac94c70585e051627a7a1dcc542518bc6540264e60f20a8c0",
            ),
        ] {
            assert_eq!(hex::encode(params_digest(action).0), digest);
        }
        let pool = PoolId::new("pool_vip");
        assert_eq!(command_target(&pool, &reserve), "pool_vip");
        assert_eq!(command_target(&pool, &confirm), "pool_vip:1");
    }

    #[test]
    fn actor_changes_are_signed_as_published() {
        let register = ActorChange::Registered {
            role: crate::actor::Role::Client,
            public_key: [0xab; 32],
        };
        let (action, params) = actor_change_params(&register);
        assert_eq!(action, "register_actor");
        let signed = actor_signing_bytes(
            action,
            &ActorId::new("shop"),
            &params,
            &IdempotencyToken::new("t"),
            &ActorId::new("admin"),
            Timestamp(5),
        );
        let expected = format!(
            "allot-sig-v1\naction:14:register_actor\ntarget:4:shop\n\
             param.public_key:64:{}\nparam.role:6:client\n\
             token:1:t\nactor:5:admin\nsigned_at:1:5\n",
            "ab".repeat(32)
        );
        assert_eq!(signed, expected.as_bytes());
        assert_eq!(
            actor_change_params(&ActorChange::Revoked),
            ("revoke_actor", vec![])
        );
    }
}
