//! Golden bytes of the stored schema: one event of every `Change` (and every `Rejection`) and one
//! actor event of every `ActorChange`, encoded with fixed values. A schema change — a field added,
//! reordered or retyped, a variant moved — changes these bytes and fails here; then freeze the
//! old shape as `v1` in `codec` and add the new schema's goldens beside these.

use allot_domain::codec::{
    CodecError, SCHEMA_VERSION, decode_actor_event, decode_event, encode_actor_event, encode_event,
};
use allot_domain::{
    Action, ActorChange, ActorEvent, ActorId, Attestation, Change, Event, IdempotencyToken,
    OnBehalfOf, ParamsDigest, PoolId, Rejection, ReservationId, ReservationState, Role, Timestamp,
};
use proptest::prelude::*;

const T0: u64 = 1_767_225_600_000;

fn attestation() -> Attestation {
    Attestation {
        signed_at: Timestamp(T0 - 250),
        signature: (0u8..64).collect(),
    }
}

fn digest() -> ParamsDigest {
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(37).wrapping_add(5);
    }
    ParamsDigest(digest)
}

fn event(
    action: Action,
    change: Change,
    allocated: (u64, u64),
    states: [Option<ReservationState>; 2],
) -> Event {
    Event {
        pool: PoolId::new("pool_vip"),
        at: Timestamp(T0),
        actor: ActorId::new("checkout_svc"),
        attestation: attestation(),
        token: IdempotencyToken::new("tok-a1"),
        digest: digest(),
        action,
        allocated_before: allocated.0,
        allocated_after: allocated.1,
        prior_state: states[0],
        new_state: states[1],
        change,
        on_behalf_of: allot_domain::OnBehalfOf::Nobody,
        batch: None,
    }
}

fn reserve_action() -> Action {
    Action::Reserve {
        resource: "A1".to_owned(),
        requester: "buyer_a".to_owned(),
        duration_ms: 600_000,
        count: 2,
    }
}

const HELD: Option<ReservationState> = Some(ReservationState::Held);

/// (name, event) for every `Change` variant.
fn change_fixtures() -> Vec<(&'static str, Event)> {
    vec![
        (
            "pool_declared",
            event(
                Action::DeclarePool {
                    capacity: 300,
                    closes_at: Some(Timestamp(T0 + 86_400_000)),
                    units: vec!["A1".to_owned(), "A2".to_owned()],
                    idempotency_window_ms: 300_000,
                },
                Change::PoolDeclared,
                (0, 0),
                [None, None],
            ),
        ),
        (
            "capacity_adjusted",
            event(
                Action::AdjustCapacity { capacity: 500 },
                Change::CapacityAdjusted {
                    capacity_before: 300,
                },
                (7, 7),
                [None, None],
            ),
        ),
        (
            "pool_closed",
            event(Action::ClosePool, Change::PoolClosed, (7, 7), [None, None]),
        ),
        (
            "reserved",
            event(
                reserve_action(),
                Change::Reserved {
                    reservation: 12,
                    expires_at: Timestamp(T0 + 600_000),
                },
                (7, 9),
                [None, HELD],
            ),
        ),
        (
            "confirmed",
            event(
                Action::ConfirmReservation { reservation: 12 },
                Change::Confirmed { reservation: 12 },
                (9, 9),
                [HELD, Some(ReservationState::Confirmed)],
            ),
        ),
        (
            "released",
            event(
                Action::CancelReservation { reservation: 12 },
                Change::Released { reservation: 12 },
                (9, 7),
                [HELD, Some(ReservationState::Released)],
            ),
        ),
        (
            "expired",
            event(
                Action::ExpireReservation { reservation: 12 },
                Change::Expired {
                    reservation: 12,
                    lateness_ms: 1_234,
                },
                (9, 7),
                [HELD, Some(ReservationState::Expired)],
            ),
        ),
    ]
}

/// (name, rejection) for every `Rejection` variant, each recorded as a `Rejected` event.
fn rejection_fixtures() -> Vec<(&'static str, Event)> {
    let rejections = vec![
        (
            "invalid_request",
            Rejection::InvalidRequest {
                field: "resource".to_owned(),
                reason: "not a unit of this pool".to_owned(),
            },
        ),
        (
            "token_collision",
            Rejection::TokenCollision {
                recorded_action: "confirm_reservation".to_owned(),
            },
        ),
        (
            "not_known",
            Rejection::NotKnown {
                what: "reservation".to_owned(),
                id: "pool_vip:99".to_owned(),
            },
        ),
        (
            "pool_closed",
            Rejection::PoolClosed {
                reason: "closed to new reservations".to_owned(),
            },
        ),
        (
            "pool_capacity_exceeded",
            Rejection::PoolCapacityExceeded {
                capacity: 300,
                allocated: 299,
                requested: 2,
            },
        ),
        (
            "resource_unavailable",
            Rejection::ResourceUnavailable {
                resource: "A1".to_owned(),
                held_by: ReservationId {
                    pool: PoolId::new("pool_vip"),
                    seq: 3,
                },
            },
        ),
        (
            "not_held",
            Rejection::NotHeld {
                state: ReservationState::Expired,
            },
        ),
        (
            "window_elapsed",
            Rejection::WindowElapsed {
                expires_at: Timestamp(T0 - 1),
            },
        ),
        (
            "window_not_elapsed",
            Rejection::WindowNotElapsed {
                expires_at: Timestamp(T0 + 1),
            },
        ),
        (
            "recording_failure",
            Rejection::RecordingFailure {
                reason: "store unavailable".to_owned(),
            },
        ),
        (
            "pool_already_declared",
            Rejection::PoolAlreadyDeclared {
                pool: "pool_vip".to_owned(),
            },
        ),
        (
            "capacity_below_allocated",
            Rejection::CapacityBelowAllocated {
                capacity: 1,
                allocated: 9,
            },
        ),
    ];
    rejections
        .into_iter()
        .map(|(name, rejection)| {
            let state = Some(ReservationState::Confirmed);
            (
                name,
                event(
                    reserve_action(),
                    Change::Rejected(rejection),
                    (9, 9),
                    [state, state],
                ),
            )
        })
        .collect()
}

fn actor_fixtures() -> Vec<(&'static str, ActorEvent)> {
    let roles = [
        ("registered_admin", Role::Admin),
        ("registered_client", Role::Client),
        ("registered_sweeper", Role::Sweeper),
        ("registered_auditor", Role::Auditor),
    ];
    let mut fixtures: Vec<_> = roles
        .into_iter()
        .map(|(name, role)| {
            let mut public_key = [0u8; 32];
            for (i, byte) in public_key.iter_mut().enumerate() {
                *byte = 0xA0 ^ i as u8;
            }
            (
                name,
                ActorEvent {
                    actor: ActorId::new("checkout_svc"),
                    change: ActorChange::Registered { role, public_key },
                    by: ActorId::new("root_admin"),
                    token: IdempotencyToken::new("reg-1"),
                    attestation: attestation(),
                    at: Timestamp(T0),
                },
            )
        })
        .collect();
    fixtures.push((
        "revoked",
        ActorEvent {
            actor: ActorId::new("checkout_svc"),
            change: ActorChange::Revoked,
            by: ActorId::new("root_admin"),
            token: IdempotencyToken::new("rev-1"),
            attestation: Attestation::default(),
            at: Timestamp(T0 + 1),
        },
    ));
    fixtures
}

/// `encode_event` of `change_fixtures()` then `rejection_fixtures()`, schema 1.
const EVENT_GOLDEN: [(&str, &str); 19] = [
    (
        "pool_declared",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b8000fb2c0101fd0004017c9b01000002024131024132fce09304000000000000",
    ),
    (
        "capacity_adjusted",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b8001fbf4010707000001fb2c01",
    ),
    (
        "pool_closed",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80020707000002",
    ),
    (
        "reserved",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc0270900020709000100030cfdc0cfe3769b010000",
    ),
    (
        "confirmed",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80040c090901000101040c",
    ),
    (
        "released",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80050c090701000102050c",
    ),
    (
        "expired",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80060c090701000103060cfbd204",
    ),
    (
        "invalid_request",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc0270900020909010101010700087265736f75726365176e6f74206120756e6974206f66207468697320706f6f6c",
    ),
    (
        "token_collision",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc027090002090901010101070113636f6e6669726d5f7265736572766174696f6e",
    ),
    (
        "not_known",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc02709000209090101010107020b7265736572766174696f6e0b706f6f6c5f7669703a3939",
    ),
    (
        "pool_closed",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc02709000209090101010107031a636c6f73656420746f206e6577207265736572766174696f6e73",
    ),
    (
        "pool_capacity_exceeded",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc0270900020909010101010704fb2c01fb2b0102",
    ),
    (
        "resource_unavailable",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc027090002090901010101070502413108706f6f6c5f76697003",
    ),
    (
        "not_held",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc027090002090901010101070603",
    ),
    (
        "window_elapsed",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc0270900020909010101010707fdffa7da769b010000",
    ),
    (
        "window_not_elapsed",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc0270900020909010101010708fd01a8da769b010000",
    ),
    (
        "recording_failure",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc02709000209090101010107091173746f726520756e617661696c61626c65",
    ),
    (
        "pool_already_declared",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc027090002090901010101070a08706f6f6c5f766970",
    ),
    (
        "capacity_below_allocated",
        "0108706f6f6c5f766970fd00a8da769b0100000c636865636b6f75745f737663fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f06746f6b2d6131052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80030241310762757965725f61fcc027090002090901010101070b0109",
    ),
];

/// `encode_actor_event` of `actor_fixtures()`, schema 1.
const ACTOR_GOLDEN: [(&str, &str); 5] = [
    (
        "registered_admin",
        "010c636865636b6f75745f7376630000a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf0a726f6f745f61646d696e057265672d31fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3ffd00a8da769b010000",
    ),
    (
        "registered_client",
        "010c636865636b6f75745f7376630001a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf0a726f6f745f61646d696e057265672d31fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3ffd00a8da769b010000",
    ),
    (
        "registered_sweeper",
        "010c636865636b6f75745f7376630002a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf0a726f6f745f61646d696e057265672d31fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3ffd00a8da769b010000",
    ),
    (
        "registered_auditor",
        "010c636865636b6f75745f7376630003a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf0a726f6f745f61646d696e057265672d31fd06a7da769b01000040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3ffd00a8da769b010000",
    ),
    (
        "revoked",
        "010c636865636b6f75745f737663010a726f6f745f61646d696e057265762d310000fd01a8da769b010000",
    ),
];

fn event_fixtures() -> Vec<(&'static str, Event)> {
    change_fixtures()
        .into_iter()
        .chain(rejection_fixtures())
        .collect()
}

fn golden_bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).expect("golden constants are hex")
}

#[test]
fn every_change_and_rejection_encodes_to_its_golden_bytes() {
    let fixtures = event_fixtures();
    assert_eq!(fixtures.len(), EVENT_GOLDEN.len());
    for ((name, event), (golden_name, golden)) in fixtures.iter().zip(EVENT_GOLDEN) {
        assert_eq!(*name, golden_name);
        // Schema 2 is schema 1's body followed by `on_behalf_of` (`Nobody`: variant 0).
        assert_eq!(
            hex::encode(encode_event(event)),
            format!("02{}00", &golden[2..]),
            "{name}: the schema changed"
        );
    }
}

#[test]
fn every_golden_event_decodes_to_its_value() {
    for ((name, event), (_, golden)) in event_fixtures().iter().zip(EVENT_GOLDEN) {
        // The goldens are schema 1, which did not record `on_behalf_of`.
        let upcast = Event {
            on_behalf_of: OnBehalfOf::Unrecorded,
            ..event.clone()
        };
        assert_eq!(
            decode_event(&golden_bytes(golden)).as_ref(),
            Ok(&upcast),
            "{name}"
        );
        // The current encoding decodes back to the value.
        assert_eq!(
            decode_event(&encode_event(event)).as_ref(),
            Ok(event),
            "{name}"
        );
    }
}

#[test]
fn every_actor_change_encodes_to_its_golden_bytes_and_decodes_back() {
    let fixtures = actor_fixtures();
    assert_eq!(fixtures.len(), ACTOR_GOLDEN.len());
    for ((name, event), (golden_name, golden)) in fixtures.iter().zip(ACTOR_GOLDEN) {
        assert_eq!(*name, golden_name);
        // Actor events are the same in schemas 1 and 2.
        assert_eq!(
            hex::encode(encode_actor_event(event)),
            format!("02{}", &golden[2..]),
            "{name}: the schema changed"
        );
        assert_eq!(
            decode_actor_event(&golden_bytes(golden)).as_ref(),
            Ok(event),
            "{name}"
        );
    }
}

#[test]
fn every_golden_here_is_of_schema_1_and_the_current_schema_is_3() {
    for (name, golden) in EVENT_GOLDEN.iter().chain(ACTOR_GOLDEN.iter()) {
        assert_eq!(golden_bytes(golden)[0], 1, "{name}");
    }
    assert_eq!(SCHEMA_VERSION, 3);
}

#[test]
fn the_fixtures_cover_every_change_variant() {
    let mut kinds: Vec<&str> = event_fixtures()
        .iter()
        .map(|(_, event)| event.kind_name())
        .collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "PoolDeclared",
            "CapacityAdjusted",
            "PoolClosed",
            "Reserved",
            "Confirmed",
            "Released",
            "Expired",
            "Rejected"
        ]
    );
    let codes: std::collections::HashSet<_> = rejection_fixtures()
        .iter()
        .filter_map(|(_, event)| event.rejection().map(Rejection::code))
        .collect();
    // `not-owner` came with schema 2 (its golden is in tests/fixtures/events/v2).
    assert_eq!(codes.len(), allot_domain::RejectionCode::ALL.len() - 1);
}

#[test]
fn empty_input_is_empty() {
    assert_eq!(decode_event(&[]), Err(CodecError::Empty));
    assert_eq!(decode_actor_event(&[]), Err(CodecError::Empty));
}

#[test]
fn an_unknown_schema_byte_is_unknown_schema() {
    let mut bytes = golden_bytes(EVENT_GOLDEN[0].1);
    for version in [0u8, 4, 0xff] {
        bytes[0] = version;
        assert_eq!(
            decode_event(&bytes),
            Err(CodecError::UnknownSchema(version))
        );
        assert_eq!(
            decode_actor_event(&bytes),
            Err(CodecError::UnknownSchema(version))
        );
    }
}

#[test]
fn trailing_bytes_are_refused_with_their_count() {
    for (name, golden) in EVENT_GOLDEN {
        let mut bytes = golden_bytes(golden);
        bytes.push(0);
        assert_eq!(decode_event(&bytes), Err(CodecError::Trailing(1)), "{name}");
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_event(&bytes), Err(CodecError::Trailing(4)), "{name}");
    }
    let mut bytes = golden_bytes(ACTOR_GOLDEN[0].1);
    bytes.push(9);
    assert_eq!(decode_actor_event(&bytes), Err(CodecError::Trailing(1)));
}

#[test]
fn every_truncation_of_a_golden_is_malformed() {
    for (name, golden) in EVENT_GOLDEN {
        let bytes = golden_bytes(golden);
        for len in 1..bytes.len() {
            assert!(
                matches!(decode_event(&bytes[..len]), Err(CodecError::Malformed(_))),
                "{name} truncated to {len} bytes"
            );
        }
    }
    for (name, golden) in ACTOR_GOLDEN {
        let bytes = golden_bytes(golden);
        for len in 1..bytes.len() {
            assert!(
                matches!(
                    decode_actor_event(&bytes[..len]),
                    Err(CodecError::Malformed(_))
                ),
                "{name} truncated to {len} bytes"
            );
        }
    }
}

#[test]
fn a_length_prefix_claiming_more_than_the_decode_limit_is_malformed_not_an_allocation() {
    // Schema 1, then a u64 varint (tag 253) claiming a pool id of 2^64 - 1 bytes.
    let mut bytes = vec![SCHEMA_VERSION, 253];
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode_event(&bytes),
        Err(CodecError::Malformed(_))
    ));
    // A plausible-looking claim just above the limit, with no bytes behind it.
    let mut bytes = vec![SCHEMA_VERSION, 252];
    bytes.extend_from_slice(&((allot_domain::codec::DECODE_BYTES_MAX as u32) + 1).to_le_bytes());
    assert!(matches!(
        decode_event(&bytes),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn a_pool_event_is_not_read_as_an_actor_event() {
    for (name, golden) in EVENT_GOLDEN {
        assert!(decode_actor_event(&golden_bytes(golden)).is_err(), "{name}");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_event(&bytes);
        let _ = decode_actor_event(&bytes);
        let mut versioned = vec![SCHEMA_VERSION];
        versioned.extend_from_slice(&bytes);
        let _ = decode_event(&versioned);
        let _ = decode_actor_event(&versioned);
    }

    #[test]
    fn a_golden_with_one_byte_changed_decodes_or_errs_without_panicking(
        which in 0..EVENT_GOLDEN.len(),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = golden_bytes(EVENT_GOLDEN[which].1);
        let at = position.index(bytes.len());
        bytes[at] = value;
        if let Ok(event) = decode_event(&bytes) {
            // Whatever decodes re-encodes to a canonical form that decodes to the same value.
            prop_assert_eq!(decode_event(&encode_event(&event)), Ok(event));
        }
    }
}

#[test]
fn the_largest_valid_declare_event_round_trips() {
    use allot_domain::command::{UNIT_BYTES_MAX, UNITS_MAX};
    let units: Vec<String> = (0..UNITS_MAX)
        .map(|i| format!("{i:0>width$}", width = UNIT_BYTES_MAX))
        .collect();
    let action = Action::DeclarePool {
        capacity: allot_domain::command::CAPACITY_MAX,
        closes_at: None,
        units,
        idempotency_window_ms: 300_000,
    };
    let command = allot_domain::Command {
        pool: PoolId::new("pool_vip"),
        actor: ActorId::new("venue_admin"),
        role: allot_domain::Role::Admin,
        attestation: attestation(),
        token: IdempotencyToken::new("big"),
        digest: digest(),
        action,
        batch: None,
    };
    assert_eq!(command.validate(), Ok(()));
    let decision = allot_domain::decide(&allot_domain::Pool::default(), &command, Timestamp(T0));
    let Ok(allot_domain::Decision::Append(event)) = decision else {
        panic!("a valid declare is decided: {decision:?}");
    };
    let bytes = encode_event(&event);
    assert!(
        bytes.len() <= allot_domain::codec::ENCODED_EVENT_BYTES_MAX,
        "largest declare encodes to {} bytes",
        bytes.len()
    );
    assert_eq!(decode_event(&bytes), Ok(event));
}

#[test]
fn a_schema_2_event_claiming_its_owner_unrecorded_is_malformed() {
    // `Unrecorded` exists only for events read from schema 1; schema 2 stores 0 or 1.
    let (_, event) = event_fixtures().into_iter().next().expect("a fixture");
    let mut bytes = encode_event(&event);
    assert_eq!(bytes.first(), Some(&2));
    assert_eq!(bytes.last(), Some(&0), "Nobody is variant 0, last");
    if let Some(last) = bytes.last_mut() {
        *last = 2;
    }
    assert!(matches!(
        decode_event(&bytes),
        Err(CodecError::Malformed(_))
    ));
    let mut into = event.clone();
    assert!(allot_domain::codec::decode_event_into(&bytes, &mut into).is_err());
    // An upcast event of schema 1 re-encodes to its schema 1 bytes.
    let v1 = golden_bytes(EVENT_GOLDEN[0].1);
    let upcast = decode_event(&v1).expect("a schema 1 golden");
    assert_eq!(upcast.on_behalf_of, OnBehalfOf::Unrecorded);
    assert_eq!(encode_event(&upcast), v1);
}

/// An event has one encoding: one of no batch is schema 2, so schema 3 without a membership is
/// refused, by the whole decode and the in-place one alike.
#[test]
fn schema_3_without_a_batch_membership_is_refused() {
    let mut event = decode_event(&golden_bytes(EVENT_GOLDEN[0].1)).expect("a golden event");
    event.on_behalf_of = allot_domain::OnBehalfOf::Nobody;
    assert!(event.batch.is_none());
    let schema_2 = encode_event(&event);
    assert_eq!(schema_2[0], 2);
    assert_eq!(decode_event(&schema_2).as_ref(), Ok(&event));
    // Schema 2's bytes with the schema-3 byte and an absent `batch` (bincode's `None`, 0).
    let mut forged = schema_2.clone();
    forged[0] = 3;
    forged.push(0);
    assert!(matches!(
        decode_event(&forged),
        Err(CodecError::Malformed(_))
    ));
    let mut into = event.clone();
    assert!(matches!(
        allot_domain::codec::decode_event_into(&forged, &mut into),
        Err(CodecError::Malformed(_))
    ));
}
