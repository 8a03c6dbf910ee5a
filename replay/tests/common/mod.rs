//! A recorded history for tests: runs commands through `decide`/`evolve`, signs them with ed25519
//! keys registered in the `actors` stream, and records them with versions and positions, the
//! way the service would. Also applies each event to live projections right after deciding.

#![allow(dead_code)]

use std::collections::HashMap;

use allot_domain::batch::{Member, SignedBatch, batch_signing_bytes};
use allot_domain::signing::{
    actor_change_params, actor_signing_bytes, command_target, params_digest, signing_bytes,
};
use allot_domain::{
    Action, ActorChange, ActorEvent, ActorId, Attestation, Command, Decision, IdempotencyToken,
    Outcome, Pool, PoolId, Rejection, Role, Timestamp, decide, evolve,
};
use allot_projections::Projections;
use allot_replay::{Recorded, RecordedActorEvent, RecordedPoolEvent};
use ed25519_dalek::{Signer, SigningKey};

pub const SECOND: u64 = 1_000;
pub const MINUTE: u64 = 60_000;
/// 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000;
/// Positions advance by this much per record (store positions need not be contiguous).
pub const POSITION_STEP: u64 = 7;

pub fn at(ms_after_t0: u64) -> Timestamp {
    Timestamp(T0 + ms_after_t0)
}

pub fn stream_of(pool: &str) -> String {
    allot_domain::streams::pool_stream(&PoolId::new(pool))
}

pub struct History {
    pub records: Vec<Recorded>,
    pub pools: HashMap<PoolId, Pool>,
    pub live: Projections,
    keys: HashMap<String, SigningKey>,
    versions: HashMap<String, u64>,
    actors_version: u64,
    next_position: u64,
}

impl History {
    /// A history whose service has bootstrapped `admin` and `sweeper` (self-registered), and whose
    /// admin registered the client `shop` and the auditor `reader`.
    pub fn new() -> History {
        let mut history = History {
            records: Vec::new(),
            pools: HashMap::new(),
            live: Projections::new(),
            keys: HashMap::new(),
            versions: HashMap::new(),
            actors_version: 0,
            next_position: 100,
        };
        history.register("admin", Role::Admin, 1, "admin");
        history.register("sweeper", Role::Sweeper, 2, "sweeper");
        history.register("shop", Role::Client, 3, "admin");
        history.register("reader", Role::Auditor, 4, "admin");
        history
    }

    pub fn key(&self, actor: &str) -> &SigningKey {
        &self.keys[actor]
    }

    fn position(&mut self) -> u64 {
        let position = self.next_position;
        self.next_position += POSITION_STEP;
        position
    }

    /// Registers `actor` at T0 - 1 s, signed by `by` (itself for bootstrap).
    pub fn register(&mut self, actor: &str, role: Role, seed: u8, by: &str) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public_key = key.verifying_key().to_bytes();
        self.keys.insert(actor.to_owned(), key);
        let when = Timestamp(T0 - SECOND);
        let token = IdempotencyToken::new(format!("register-{actor}"));
        let change = ActorChange::Registered { role, public_key };
        let (action, params) = actor_change_params(&change);
        let message = actor_signing_bytes(
            action,
            &ActorId::new(actor),
            &params,
            &token,
            &ActorId::new(by),
            when,
        );
        let signature = self.keys[by].sign(&message).to_bytes().to_vec();
        let event = ActorEvent {
            actor: ActorId::new(actor),
            change,
            by: ActorId::new(by),
            token,
            attestation: Attestation {
                signed_at: when,
                signature,
            },
            at: when,
        };
        let position = self.position();
        self.records.push(Recorded::Actor(RecordedActorEvent {
            version: self.actors_version,
            position,
            event,
        }));
        self.actors_version += 1;
    }

    /// `by` revokes `actor`'s key at `ms` after T0.
    pub fn revoke(&mut self, ms: u64, actor: &str, by: &str) {
        let when = at(ms);
        let token = IdempotencyToken::new(format!("revoke-{actor}-{ms}"));
        let (action, params) = actor_change_params(&ActorChange::Revoked);
        let message = actor_signing_bytes(
            action,
            &ActorId::new(actor),
            &params,
            &token,
            &ActorId::new(by),
            when,
        );
        let signature = self.keys[by].sign(&message).to_bytes().to_vec();
        let event = ActorEvent {
            actor: ActorId::new(actor),
            change: ActorChange::Revoked,
            by: ActorId::new(by),
            token,
            attestation: Attestation {
                signed_at: when,
                signature,
            },
            at: when,
        };
        let position = self.position();
        self.records.push(Recorded::Actor(RecordedActorEvent {
            version: self.actors_version,
            position,
            event,
        }));
        self.actors_version += 1;
    }

    /// Signs `event` again as `actor`, claiming `signed_at`.
    pub fn resign(&self, event: &mut allot_domain::Event, actor: &str, signed_at: Timestamp) {
        let target = command_target(&event.pool, &event.action);
        event.attestation.signed_at = signed_at;
        event.attestation.signature = self.keys[actor]
            .sign(&signing_bytes(
                &event.action,
                &target,
                &event.token,
                &event.actor,
                signed_at,
            ))
            .to_bytes()
            .to_vec();
    }

    /// Runs `action` on `pool` as `actor` with `token` at `ms` after T0. Appended events are
    /// recorded; replays and unrecorded rejections are returned as they are.
    pub fn run(
        &mut self,
        ms: u64,
        actor: &str,
        pool: &str,
        token: &str,
        action: Action,
    ) -> Result<Outcome, Rejection> {
        let pool_id = PoolId::new(pool);
        let now = at(ms);
        let target = command_target(&pool_id, &action);
        let actor_id = ActorId::new(actor);
        let token = IdempotencyToken::new(token);
        let signature = self.keys[actor]
            .sign(&signing_bytes(&action, &target, &token, &actor_id, now))
            .to_bytes()
            .to_vec();
        let command = Command {
            pool: pool_id,
            actor: actor_id,
            role: role_of(actor),
            attestation: Attestation {
                signed_at: now,
                signature,
            },
            token,
            digest: params_digest(&action),
            action,
            batch: None,
        };
        self.decide_and_record(command, now)
    }

    /// Runs `members` (pool, token, action) as the signed batch `batch_token` of `actor` at `ms`
    /// after T0, as the service does: one signature over the root, each member decided in
    /// order with its membership. Returns each member's outcome.
    pub fn run_batch(
        &mut self,
        ms: u64,
        actor: &str,
        batch_token: &str,
        members: &[(&str, &str, Action)],
    ) -> Vec<Result<Outcome, Rejection>> {
        let now = at(ms);
        let actor_id = ActorId::new(actor);
        let batch_token = IdempotencyToken::new(batch_token);
        let members: Vec<(PoolId, IdempotencyToken, Action)> = members
            .iter()
            .map(|(pool, token, action)| {
                (
                    PoolId::new(*pool),
                    IdempotencyToken::new(*token),
                    action.clone(),
                )
            })
            .collect();
        let tree = SignedBatch::new(
            members.iter().map(|(pool, token, action)| Member {
                pool,
                action,
                token,
            }),
            &actor_id,
            now,
        )
        .expect("a batch has members");
        let signature = self.keys[actor]
            .sign(&batch_signing_bytes(
                &tree.root(),
                tree.count(),
                &batch_token,
                &actor_id,
                now,
            ))
            .to_bytes()
            .to_vec();
        members
            .into_iter()
            .enumerate()
            .map(|(index, (pool, token, action))| {
                let command = Command {
                    pool,
                    actor: actor_id.clone(),
                    role: role_of(actor),
                    attestation: Attestation {
                        signed_at: now,
                        signature: signature.clone(),
                    },
                    token,
                    digest: params_digest(&action),
                    action,
                    batch: tree.membership(&batch_token, index).map(Box::new),
                };
                self.decide_and_record(command, now)
            })
            .collect()
    }

    /// Decides `command` at `now`; an appended event is recorded.
    fn decide_and_record(
        &mut self,
        command: Command,
        now: Timestamp,
    ) -> Result<Outcome, Rejection> {
        let pool = command.pool.as_str().to_owned();
        let aggregate = self.pools.entry(command.pool.clone()).or_default();
        match decide(aggregate, &command, now)? {
            Decision::Append(event) => {
                evolve(aggregate, &event).expect("decided events apply");
                let stream = stream_of(&pool);
                let version = *self.versions.get(&stream).unwrap_or(&0);
                self.versions.insert(stream.clone(), version + 1);
                let position = self.position();
                self.live.apply(version, position, &event);
                let outcome = event.outcome();
                self.records.push(Recorded::Pool(RecordedPoolEvent {
                    stream,
                    version,
                    position,
                    event,
                }));
                Ok(outcome)
            }
            Decision::Replay(outcome) => Ok(outcome),
        }
    }

    pub fn declare(
        &mut self,
        ms: u64,
        pool: &str,
        capacity: u64,
        closes_at: Option<u64>,
        units: &[&str],
    ) {
        let outcome = self.run(
            ms,
            "admin",
            pool,
            &format!("declare-{pool}"),
            Action::DeclarePool {
                capacity,
                closes_at: closes_at.map(at),
                units: units.iter().map(|u| (*u).to_owned()).collect(),
                idempotency_window_ms: 5 * MINUTE,
            },
        );
        assert!(
            matches!(outcome, Ok(Outcome::PoolDeclared { .. })),
            "{outcome:?}"
        );
    }

    pub fn reserve(
        &mut self,
        ms: u64,
        pool: &str,
        requester: &str,
        resource: &str,
        token: &str,
    ) -> Outcome {
        self.run(
            ms,
            "shop",
            pool,
            token,
            Action::Reserve {
                resource: resource.to_owned(),
                requester: requester.to_owned(),
                duration_ms: 10 * MINUTE,
                count: 1,
            },
        )
        .expect("recorded")
    }

    pub fn confirm(&mut self, ms: u64, pool: &str, seq: u64, token: &str) -> Outcome {
        self.run(
            ms,
            "shop",
            pool,
            token,
            Action::ConfirmReservation { reservation: seq },
        )
        .expect("recorded")
    }

    pub fn cancel(&mut self, ms: u64, pool: &str, seq: u64, token: &str) -> Outcome {
        self.run(
            ms,
            "shop",
            pool,
            token,
            Action::CancelReservation { reservation: seq },
        )
        .expect("recorded")
    }

    pub fn expire(&mut self, ms: u64, pool: &str, seq: u64, token: &str) -> Outcome {
        self.run(
            ms,
            "sweeper",
            pool,
            token,
            Action::ExpireReservation { reservation: seq },
        )
        .expect("recorded")
    }

    pub fn adjust(&mut self, ms: u64, pool: &str, capacity: u64, token: &str) -> Outcome {
        self.run(
            ms,
            "admin",
            pool,
            token,
            Action::AdjustCapacity { capacity },
        )
        .expect("recorded")
    }

    /// Index in `records` of the pool event at `version` of `pool`'s stream.
    pub fn index_of(&self, pool: &str, version: u64) -> usize {
        let stream = stream_of(pool);
        self.records
            .iter()
            .position(
                |r| matches!(r, Recorded::Pool(p) if p.stream == stream && p.version == version),
            )
            .expect("event exists")
    }

    pub fn pool_event_mut(&mut self, index: usize) -> &mut RecordedPoolEvent {
        match &mut self.records[index] {
            Recorded::Pool(recorded) => recorded,
            Recorded::Actor(_) => panic!("not a pool event"),
        }
    }

    pub fn last_version(&self, pool: &str) -> u64 {
        self.versions[&stream_of(pool)] - 1
    }
}

/// The walkthrough and its variants over three pools: the VIP tier (capacity 2, a retry, a
/// rejected buyer, a confirm, an expiry, a cancellation), a seat map with an add/drop cutoff
/// (named units, a unit taken twice, a drop, attempts after the cutoff) and a pool whose
/// capacity is raised then closed.
pub fn walkthrough() -> History {
    let mut history = History::new();
    history.declare(0, "pool_vip", 2, None, &[]);
    history.declare(
        SECOND,
        "course_cs101",
        3,
        Some(30 * MINUTE),
        &["seat-1", "seat-2", "seat-3"],
    );
    history.declare(2 * SECOND, "pool_ga", 1, None, &[]);

    // VIP: A and B hold; C is refused; A retries (replayed, no event); A confirms.
    history.reserve(MINUTE, "pool_vip", "buyer_a", "vip-tier", "tok_a1");
    history.reserve(2 * MINUTE, "pool_vip", "buyer_b", "vip-tier", "tok_b1");
    let refused = history.reserve(3 * MINUTE, "pool_vip", "buyer_c", "vip-tier", "tok_c1");
    assert!(matches!(refused, Outcome::Rejected(_)));
    let retried = history.reserve(
        3 * MINUTE + SECOND,
        "pool_vip",
        "buyer_a",
        "vip-tier",
        "tok_a1",
    );
    assert!(matches!(retried, Outcome::Reserved { .. }));
    history.confirm(4 * MINUTE, "pool_vip", 1, "tok_confirm_a");

    // Students enrol in seats; seat-1 is taken twice; one drops; the cutoff passes.
    history.reserve(5 * MINUTE, "course_cs101", "student_1", "seat-1", "s1");
    history.reserve(
        5 * MINUTE + 200,
        "course_cs101",
        "student_2",
        "seat-1",
        "s2",
    );
    history.reserve(
        5 * MINUTE + 400,
        "course_cs101",
        "student_2",
        "seat-2",
        "s2b",
    );
    history.confirm(6 * MINUTE, "course_cs101", 1, "s1c");
    history.cancel(7 * MINUTE, "course_cs101", 2, "s2drop");

    // B's hold lapses; a late confirm is refused; the sweeper expires it; C gets the slot.
    let late = history.confirm(12 * MINUTE + SECOND, "pool_vip", 2, "tok_confirm_b");
    assert!(matches!(late, Outcome::Rejected(_)));
    history.expire(12 * MINUTE + 2 * SECOND, "pool_vip", 2, "tok_sweep_b");
    history.reserve(13 * MINUTE, "pool_vip", "buyer_c", "vip-tier", "tok_c2");
    history.cancel(14 * MINUTE, "pool_vip", 3, "tok_cancel_c");

    // General admission: raised from 1 to 2 (an overbooking choice), two confirmed, closed.
    history.reserve(15 * MINUTE, "pool_ga", "fan_1", "ga", "g1");
    history.confirm(15 * MINUTE + SECOND, "pool_ga", 1, "g1c");
    history.adjust(16 * MINUTE, "pool_ga", 2, "raise-ga");
    history.reserve(17 * MINUTE, "pool_ga", "fan_2", "ga", "g2");
    history.confirm(17 * MINUTE + SECOND, "pool_ga", 2, "g2c");
    history
        .run(
            18 * MINUTE,
            "admin",
            "pool_ga",
            "close-ga",
            Action::ClosePool,
        )
        .expect("recorded");

    // Contention at the cutoff: attempts just before and after closes_at.
    for (i, ms) in [
        29 * MINUTE + 59 * SECOND,
        29 * MINUTE + 59 * SECOND + 500,
        30 * MINUTE,
        30 * MINUTE + 300,
        30 * MINUTE + SECOND,
    ]
    .into_iter()
    .enumerate()
    {
        history.reserve(
            ms,
            "course_cs101",
            &format!("late_{i}"),
            "seat-3",
            &format!("late-{i}"),
        );
    }
    history
}

/// The role the actors of these scenarios are registered with.
pub fn role_of(actor: &str) -> allot_domain::Role {
    match actor {
        "admin" => allot_domain::Role::Admin,
        "sweeper" => allot_domain::Role::Sweeper,
        _ => allot_domain::Role::Client,
    }
}
