//! The frozen encoded events of every schema: `tests/fixtures/events/v<N>/<kind>.bin`, one pool
//! event of every `Change` (every `Rejection` of that schema as a `Rejected` event, each on an
//! action that can meet it, so every `Action` appears both done and refused) and one actor event
//! of every `ActorChange` and `Role`. Schema 2 adds a confirm and a cancel on behalf of the
//! owner, and the `not-owner` rejection; the `server` role arrived within schema 2. Schema 3 has
//! every pool event of schema 2 as a member of a signed batch (actor events have no schema 3).
//!
//! The files are the artefact: each directory was written by the codec of its schema and is
//! never rewritten once a later schema exists. Each file must decode (by the whole decode, the
//! in-place decode replay uses, and the pool peek) to exactly the value built here (an event of
//! schema 1 upcast: `on_behalf_of` is `Unrecorded`), and the current schema's files re-encode to
//! the same bytes. `tests/codec.rs` pins the encoder's bytes inline for its own fixed values.
//!
//! Regenerate the current schema's directory (only on purpose):
//! ```text
//! cargo test -p allot-domain --test golden_events -- --ignored regenerate_golden_events
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use allot_domain::batch::BatchMembership;
use allot_domain::codec::{
    SCHEMA_VERSION, decode_actor_event, decode_event, decode_event_into, encode_actor_event,
    encode_event, peek_pool,
};
use allot_domain::{
    Action, ActionKind, ActorChange, ActorEvent, ActorId, Attestation, Change, Event,
    IdempotencyToken, OnBehalfOf, ParamsDigest, PoolId, Rejection, RejectionCode, ReservationId,
    ReservationState, Role, Timestamp,
};

/// The schemas with a golden directory; the last is the current one.
const GOLDEN_SCHEMAS: [u8; 3] = [1, 2, 3];
/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const POOL: &str = "CS101-01";

fn golden_dir(schema: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/events/v{schema}"))
}

/// One golden value: a pool event or an actor event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Golden {
    Pool(Event),
    Actor(ActorEvent),
}

impl Golden {
    fn encode(&self) -> Vec<u8> {
        match self {
            Golden::Pool(event) => encode_event(event),
            Golden::Actor(event) => encode_actor_event(event),
        }
    }
}

fn attestation(signed_at: u64, seed: u8) -> Attestation {
    Attestation {
        signed_at: Timestamp(signed_at),
        signature: (0u8..64).map(|i| i.wrapping_mul(7) ^ seed).collect(),
    }
}

fn digest(seed: u8) -> ParamsDigest {
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(37).wrapping_add(seed);
    }
    ParamsDigest(digest)
}

/// A pool event at `T0 + offset_ms`, signed 150 ms before it.
struct Recorded {
    offset_ms: u64,
    actor: &'static str,
    token: &'static str,
    action: Action,
    allocated: (u64, u64),
    states: (Option<ReservationState>, Option<ReservationState>),
    change: Change,
}

impl Recorded {
    /// The event as schema `schema` holds it (schema 1 did not record `on_behalf_of`).
    fn event(self, seed: u8, schema: u8, on_behalf_of: OnBehalfOf) -> Event {
        let at = T0 + self.offset_ms;
        Event {
            pool: PoolId::new(POOL),
            at: Timestamp(at),
            actor: ActorId::new(self.actor),
            attestation: attestation(at - 150, seed),
            token: IdempotencyToken::new(self.token),
            digest: digest(seed),
            action: self.action,
            allocated_before: self.allocated.0,
            allocated_after: self.allocated.1,
            prior_state: self.states.0,
            new_state: self.states.1,
            change: self.change,
            on_behalf_of: if schema == 1 {
                OnBehalfOf::Unrecorded
            } else {
                on_behalf_of
            },
            batch: None,
        }
    }
}

const HELD: Option<ReservationState> = Some(ReservationState::Held);
const NO_STATE: (Option<ReservationState>, Option<ReservationState>) = (None, None);

fn reserve(resource: &str, count: u32) -> Action {
    Action::Reserve {
        resource: resource.to_owned(),
        requester: "student_0042".to_owned(),
        duration_ms: 600_000,
        count,
    }
}

/// Every pool event kind done: (file stem, what was recorded).
fn done_events() -> Vec<(&'static str, Recorded)> {
    vec![
        (
            "pool_declared",
            Recorded {
                offset_ms: 0,
                actor: "registrar",
                token: "declare-cs101",
                action: Action::DeclarePool {
                    capacity: 3,
                    closes_at: Some(Timestamp(T0 + 3_600_000)),
                    units: vec!["A1".to_owned(), "A2".to_owned(), "A3".to_owned()],
                    idempotency_window_ms: 300_000,
                },
                allocated: (0, 0),
                states: NO_STATE,
                change: Change::PoolDeclared,
            },
        ),
        (
            "pool_declared_fungible",
            Recorded {
                offset_ms: 0,
                actor: "registrar",
                token: "declare-cs101",
                action: Action::DeclarePool {
                    capacity: 300,
                    closes_at: None,
                    units: Vec::new(),
                    idempotency_window_ms: 3_600_000,
                },
                allocated: (0, 0),
                states: NO_STATE,
                change: Change::PoolDeclared,
            },
        ),
        (
            "capacity_adjusted",
            Recorded {
                offset_ms: 1_000,
                actor: "registrar",
                token: "grow-cs101",
                action: Action::AdjustCapacity { capacity: 500 },
                allocated: (7, 7),
                states: NO_STATE,
                change: Change::CapacityAdjusted {
                    capacity_before: 300,
                },
            },
        ),
        (
            "pool_closed",
            Recorded {
                offset_ms: 2_000,
                actor: "registrar",
                token: "close-cs101",
                action: Action::ClosePool,
                allocated: (7, 7),
                states: NO_STATE,
                change: Change::PoolClosed,
            },
        ),
        (
            "reserved",
            Recorded {
                offset_ms: 3_000,
                actor: "enrolment_svc",
                token: "tok-0042-a",
                action: reserve("A1", 1),
                allocated: (1, 2),
                states: (None, HELD),
                change: Change::Reserved {
                    reservation: 2,
                    expires_at: Timestamp(T0 + 603_000),
                },
            },
        ),
        (
            "reserved_count",
            Recorded {
                offset_ms: 3_500,
                actor: "enrolment_svc",
                token: "tok-0042-b",
                action: reserve("lab-bench", 4),
                allocated: (2, 6),
                states: (None, HELD),
                change: Change::Reserved {
                    reservation: 3,
                    expires_at: Timestamp(T0 + 603_500),
                },
            },
        ),
        (
            "confirmed",
            Recorded {
                offset_ms: 4_000,
                actor: "enrolment_svc",
                token: "tok-0042-c",
                action: Action::ConfirmReservation { reservation: 2 },
                allocated: (6, 6),
                states: (HELD, Some(ReservationState::Confirmed)),
                change: Change::Confirmed { reservation: 2 },
            },
        ),
        (
            "released",
            Recorded {
                offset_ms: 5_000,
                actor: "enrolment_svc",
                token: "tok-0042-d",
                action: Action::CancelReservation { reservation: 3 },
                allocated: (6, 2),
                states: (HELD, Some(ReservationState::Released)),
                change: Change::Released { reservation: 3 },
            },
        ),
        (
            "expired",
            Recorded {
                offset_ms: 604_234,
                actor: "sweeper",
                token: "expire:CS101-01:4",
                action: Action::ExpireReservation { reservation: 4 },
                allocated: (3, 2),
                states: (HELD, Some(ReservationState::Expired)),
                change: Change::Expired {
                    reservation: 4,
                    lateness_ms: 1_234,
                },
            },
        ),
    ]
}

/// Every `Rejection`, each journaled on an action that meets it: (code, action, states, why).
fn refused_events() -> Vec<(RejectionCode, Recorded)> {
    let confirmed = Some(ReservationState::Confirmed);
    let expired = Some(ReservationState::Expired);
    let refused = |action, states, rejection| Recorded {
        offset_ms: 10_000,
        actor: "enrolment_svc",
        token: "tok-refused",
        action,
        allocated: (3, 3),
        states,
        change: Change::Rejected(rejection),
    };
    vec![
        (
            RejectionCode::InvalidRequest,
            refused(
                reserve("Z9", 1),
                NO_STATE,
                Rejection::InvalidRequest {
                    field: "resource".to_owned(),
                    reason: "not a unit of this pool".to_owned(),
                },
            ),
        ),
        (
            RejectionCode::TokenCollision,
            refused(
                Action::ClosePool,
                NO_STATE,
                Rejection::TokenCollision {
                    recorded_action: "adjust_capacity".to_owned(),
                },
            ),
        ),
        (
            RejectionCode::NotKnown,
            refused(
                Action::CancelReservation { reservation: 99 },
                NO_STATE,
                Rejection::NotKnown {
                    what: "reservation".to_owned(),
                    id: format!("{POOL}:99"),
                },
            ),
        ),
        (
            RejectionCode::PoolClosed,
            refused(
                reserve("A2", 1),
                NO_STATE,
                Rejection::PoolClosed {
                    reason: "the add/drop cutoff has passed".to_owned(),
                },
            ),
        ),
        (
            RejectionCode::PoolCapacityExceeded,
            refused(
                reserve("lab-bench", 2),
                NO_STATE,
                Rejection::PoolCapacityExceeded {
                    capacity: 4,
                    allocated: 3,
                    requested: 2,
                },
            ),
        ),
        (
            RejectionCode::ResourceUnavailable,
            refused(
                reserve("A1", 1),
                NO_STATE,
                Rejection::ResourceUnavailable {
                    resource: "A1".to_owned(),
                    held_by: ReservationId {
                        pool: PoolId::new(POOL),
                        seq: 2,
                    },
                },
            ),
        ),
        (
            RejectionCode::NotHeld,
            refused(
                Action::ConfirmReservation { reservation: 4 },
                (expired, expired),
                Rejection::NotHeld {
                    state: ReservationState::Expired,
                },
            ),
        ),
        (
            RejectionCode::WindowElapsed,
            refused(
                Action::ConfirmReservation { reservation: 5 },
                (HELD, HELD),
                Rejection::WindowElapsed {
                    expires_at: Timestamp(T0 + 9_999),
                },
            ),
        ),
        (
            RejectionCode::WindowNotElapsed,
            refused(
                Action::ExpireReservation { reservation: 5 },
                (HELD, HELD),
                Rejection::WindowNotElapsed {
                    expires_at: Timestamp(T0 + 10_001),
                },
            ),
        ),
        (
            RejectionCode::RecordingFailure,
            refused(
                Action::CancelReservation { reservation: 2 },
                (confirmed, confirmed),
                Rejection::RecordingFailure {
                    reason: "store unavailable".to_owned(),
                },
            ),
        ),
        (
            RejectionCode::PoolAlreadyDeclared,
            refused(
                Action::DeclarePool {
                    capacity: 3,
                    closes_at: None,
                    units: Vec::new(),
                    idempotency_window_ms: 300_000,
                },
                NO_STATE,
                Rejection::PoolAlreadyDeclared {
                    pool: POOL.to_owned(),
                },
            ),
        ),
        (
            RejectionCode::CapacityBelowAllocated,
            refused(
                Action::AdjustCapacity { capacity: 1 },
                NO_STATE,
                Rejection::CapacityBelowAllocated {
                    capacity: 1,
                    allocated: 3,
                },
            ),
        ),
        (
            RejectionCode::NotOwner,
            refused(
                Action::CancelReservation { reservation: 2 },
                (HELD, HELD),
                Rejection::NotOwner {
                    reservation: ReservationId {
                        pool: PoolId::new(POOL),
                        seq: 2,
                    },
                },
            ),
        ),
    ]
}

fn public_key(seed: u8) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = seed ^ i as u8;
    }
    key
}

/// Every actor event kind: (file stem, event).
fn actor_events() -> Vec<(&'static str, ActorEvent)> {
    let registered = |actor: &str, role, by: &str, token: &str, seed: u8| ActorEvent {
        actor: ActorId::new(actor),
        change: ActorChange::Registered {
            role,
            public_key: public_key(seed),
        },
        by: ActorId::new(by),
        token: IdempotencyToken::new(token),
        attestation: attestation(T0 - 100, seed),
        at: Timestamp(T0),
    };
    vec![
        // The first admin registers itself (the service's bootstrap).
        (
            "actor_registered_admin",
            registered("admin", Role::Admin, "admin", "bootstrap:admin", 0xA0),
        ),
        (
            "actor_registered_client",
            registered("enrolment_svc", Role::Client, "admin", "reg-client", 0xB0),
        ),
        (
            "actor_registered_sweeper",
            registered(
                "sweeper",
                Role::Sweeper,
                "sweeper",
                "bootstrap:sweeper",
                0xC0,
            ),
        ),
        (
            "actor_registered_auditor",
            registered("auditor", Role::Auditor, "admin", "reg-auditor", 0xD0),
        ),
        (
            "actor_revoked",
            ActorEvent {
                actor: ActorId::new("enrolment_svc"),
                change: ActorChange::Revoked,
                by: ActorId::new("admin"),
                token: IdempotencyToken::new("revoke-client"),
                attestation: attestation(T0 + 59_900, 0xE0),
                at: Timestamp(T0 + 60_000),
            },
        ),
    ]
}

/// The events schema 2 added: a confirm and a cancel by an admin on behalf of the owner.
fn on_behalf_events() -> Vec<(&'static str, Recorded)> {
    vec![
        (
            "confirmed_on_behalf",
            Recorded {
                offset_ms: 4_500,
                actor: "registrar",
                token: "back-office-confirm",
                action: Action::ConfirmReservation { reservation: 2 },
                allocated: (6, 6),
                states: (HELD, Some(ReservationState::Confirmed)),
                change: Change::Confirmed { reservation: 2 },
            },
        ),
        (
            "released_on_behalf",
            Recorded {
                offset_ms: 5_500,
                actor: "registrar",
                token: "back-office-cancel",
                action: Action::CancelReservation { reservation: 3 },
                allocated: (6, 2),
                states: (HELD, Some(ReservationState::Released)),
                change: Change::Released { reservation: 3 },
            },
        ),
    ]
}

/// Every golden of `schema`: (file stem, value), pool events first.
fn goldens(schema: u8) -> Vec<(String, Golden)> {
    let mut goldens = Vec::new();
    let mut seed = 1u8;
    let mut next_seed = || {
        seed += 1;
        seed
    };
    for (stem, recorded) in done_events() {
        let event = recorded.event(next_seed(), schema, OnBehalfOf::Nobody);
        goldens.push((stem.to_owned(), Golden::Pool(event)));
    }
    for (code, recorded) in refused_events() {
        // Schema 1 had no `not-owner`.
        if schema == 1 && code == RejectionCode::NotOwner {
            continue;
        }
        let stem = format!("rejected_{}", code.as_str().replace('-', "_"));
        let event = recorded.event(next_seed(), schema, OnBehalfOf::Nobody);
        goldens.push((stem, Golden::Pool(event)));
    }
    if schema >= 2 {
        for (stem, recorded) in on_behalf_events() {
            let owner = OnBehalfOf::Owner(ActorId::new("enrolment_svc"));
            let event = recorded.event(next_seed(), schema, owner);
            goldens.push((stem.to_owned(), Golden::Pool(event)));
        }
    }
    for (stem, event) in actor_events() {
        goldens.push((stem.to_owned(), Golden::Actor(event)));
    }
    if schema >= 2 {
        goldens.push((
            "actor_registered_server".to_owned(),
            Golden::Actor(server_registered()),
        ));
    }
    if schema >= 3 {
        // Schema 3 is a pool event from a signed batch: each pool event here came in one.
        // Actor events have no schema 3.
        goldens.retain(|(_, golden)| matches!(golden, Golden::Pool(_)));
        for (index, (_, golden)) in goldens.iter_mut().enumerate() {
            if let Golden::Pool(event) = golden {
                event.batch = Some(Box::new(membership(index)));
            }
        }
    }
    goldens
}

/// A batch membership: member `index` of a batch of 40 (a proof of six digests).
fn membership(index: usize) -> BatchMembership {
    let index = u32::try_from(index).expect("few goldens");
    BatchMembership {
        token: IdempotencyToken::new("batch-2026-01-01-0001"),
        count: 40,
        index,
        proof: (0..6u8).map(|level| [level ^ (index as u8); 32]).collect(),
    }
}

/// A server instance's key, registered by the admin: role `server` arrived within schema 2.
fn server_registered() -> ActorEvent {
    ActorEvent {
        actor: ActorId::new("server-0123456789abcdef"),
        change: ActorChange::Registered {
            role: Role::Server,
            public_key: public_key(0xF0),
        },
        by: ActorId::new("admin"),
        token: IdempotencyToken::new("register-server:server-0123456789abcdef"),
        attestation: attestation(T0 - 100, 0xF0),
        at: Timestamp(T0),
    }
}

fn read_golden(schema: u8, stem: &str) -> Vec<u8> {
    let path = golden_dir(schema).join(format!("{stem}.bin"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn every_golden_file_decodes_to_its_value_and_reencodes_to_the_same_bytes() {
    for schema in GOLDEN_SCHEMAS {
        check_goldens(schema);
    }
}

fn check_goldens(schema: u8) {
    let all = goldens(schema);
    for (name, golden) in &all {
        let bytes = read_golden(schema, name);
        let stem = format!("v{schema}/{name}");
        assert_eq!(bytes.first(), Some(&schema), "{stem}: schema byte");
        match &golden {
            Golden::Pool(event) => {
                assert_eq!(decode_event(&bytes).as_ref(), Ok(event), "{stem}: decode");
                assert_eq!(peek_pool(&bytes), Ok(event.pool.as_str()), "{stem}: peek");
                // Replay's in-place decode, into a value holding another event's fields.
                let mut reused = match &all[0].1 {
                    Golden::Pool(first) => first.clone(),
                    Golden::Actor(_) => unreachable!("pool events come first"),
                };
                reused.action = reserve("a-much-longer-unit-name", 9);
                assert_eq!(
                    decode_event_into(&bytes, &mut reused),
                    Ok(()),
                    "{stem}: in place"
                );
                assert_eq!(&reused, event, "{stem}: in place");
                assert!(
                    decode_actor_event(&bytes).is_err(),
                    "{stem}: not an actor event"
                );
            }
            Golden::Actor(event) => {
                assert_eq!(
                    decode_actor_event(&bytes).as_ref(),
                    Ok(event),
                    "{stem}: decode"
                );
                assert!(decode_event(&bytes).is_err(), "{stem}: not a pool event");
            }
        }
        if SCHEMA_VERSION == schema {
            assert_eq!(golden.encode(), bytes, "{stem}: re-encoding changed bytes");
        }
    }
}

#[test]
fn the_directories_hold_exactly_the_golden_files() {
    for schema in GOLDEN_SCHEMAS {
        directory_holds_exactly_the_goldens(schema);
    }
    assert_eq!(
        GOLDEN_SCHEMAS.last(),
        Some(&SCHEMA_VERSION),
        "the current schema has goldens"
    );
}

fn directory_holds_exactly_the_goldens(schema: u8) {
    let on_disk: BTreeSet<String> = std::fs::read_dir(golden_dir(schema))
        .expect("a golden directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".bin"))
        .collect();
    let expected: BTreeSet<String> = goldens(schema)
        .into_iter()
        .map(|(stem, _)| format!("{stem}.bin"))
        .collect();
    assert_eq!(on_disk, expected);
}

/// The name of a change, by an exhaustive match: a new `Change` variant fails to compile here
/// until it has a golden.
fn change_kind(change: &Change) -> &'static str {
    match change {
        Change::PoolDeclared => "PoolDeclared",
        Change::CapacityAdjusted { .. } => "CapacityAdjusted",
        Change::PoolClosed => "PoolClosed",
        Change::Reserved { .. } => "Reserved",
        Change::Confirmed { .. } => "Confirmed",
        Change::Released { .. } => "Released",
        Change::Expired { .. } => "Expired",
        Change::Rejected(_) => "Rejected",
    }
}

/// As [`change_kind`], for actor changes and roles.
fn actor_kind(change: &ActorChange) -> &'static str {
    match change {
        ActorChange::Registered { role, .. } => match role {
            Role::Admin => "Registered(Admin)",
            Role::Client => "Registered(Client)",
            Role::Sweeper => "Registered(Sweeper)",
            Role::Auditor => "Registered(Auditor)",
            Role::Server => "Registered(Server)",
        },
        ActorChange::Revoked => "Revoked",
    }
}

#[test]
fn the_goldens_cover_every_kind_of_event() {
    let goldens = goldens(SCHEMA_VERSION);
    let pool_events: Vec<&Event> = goldens
        .iter()
        .filter_map(|(_, golden)| match golden {
            Golden::Pool(event) => Some(event),
            Golden::Actor(_) => None,
        })
        .collect();
    let changes: BTreeSet<&str> = pool_events.iter().map(|e| change_kind(&e.change)).collect();
    assert_eq!(changes.len(), 8, "every Change: {changes:?}");
    let done: BTreeSet<ActionKind> = pool_events
        .iter()
        .filter(|e| e.rejection().is_none())
        .map(|e| e.action_kind())
        .collect();
    let refused: BTreeSet<ActionKind> = pool_events
        .iter()
        .filter(|e| e.rejection().is_some())
        .map(|e| e.action_kind())
        .collect();
    let every_action: BTreeSet<ActionKind> = ActionKind::ALL.into_iter().collect();
    assert_eq!(done, every_action, "every action done");
    assert_eq!(refused, every_action, "every action refused");
    let codes: BTreeSet<RejectionCode> = pool_events
        .iter()
        .filter_map(|e| e.rejection().map(Rejection::code))
        .collect();
    assert_eq!(codes, RejectionCode::ALL.into_iter().collect());
    let on_behalf: BTreeSet<ActionKind> = pool_events
        .iter()
        .filter(|e| matches!(e.on_behalf_of, OnBehalfOf::Owner(_)))
        .map(|e| e.action_kind())
        .collect();
    assert_eq!(
        on_behalf,
        [
            ActionKind::ConfirmReservation,
            ActionKind::CancelReservation
        ]
        .into_iter()
        .collect(),
        "confirm and cancel on behalf of the owner"
    );
    let unbatched = self::goldens(allot_domain::codec::SCHEMA_VERSION_UNBATCHED);
    let actor_kinds: BTreeSet<&str> = unbatched
        .iter()
        .filter_map(|(_, golden)| match golden {
            Golden::Actor(event) => Some(actor_kind(&event.change)),
            Golden::Pool(_) => None,
        })
        .collect();
    assert_eq!(
        actor_kinds.len(),
        Role::ALL.len() + 1,
        "every ActorChange and Role: {actor_kinds:?}"
    );
}

/// Rewrites the current schema's golden files from the values above with today's encoder
/// (earlier schemas' directories are frozen).
#[test]
#[ignore = "rewrites tests/fixtures/events/v<current>; run only on purpose"]
fn regenerate_golden_events() {
    let dir = golden_dir(SCHEMA_VERSION);
    std::fs::create_dir_all(&dir).expect("create the golden directory");
    for (stem, golden) in goldens(SCHEMA_VERSION) {
        std::fs::write(dir.join(format!("{stem}.bin")), golden.encode()).expect("write golden");
    }
}
