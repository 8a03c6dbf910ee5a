//! The simulated world: its setup from the seed, its steps, its crashes and its finish.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use allot_domain::command::HOLD_DURATION_MS_MAX;
use allot_domain::signing::params_digest;
use allot_domain::{
    Action, ActorChange, ActorEvent, ActorId, Attestation, Command, IdempotencyToken, Outcome,
    PoolId, Role, Timestamp,
};
use allot_projections::Projections;
use allot_server::clock::{Clock, ManualClock};
use allot_server::metrics::Metrics;
use allot_server::service::sweeper::{SweeperKey, sweep_once};
use allot_server::service::{Reply, Service, SubmitError};
use allot_server::store::EventStore;
use ed25519_dalek::SigningKey;
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::mirror::{Mirror, audit_passes, contents_difference, replay_from_scratch};
use super::model::{Intent, Model, Purpose, Status};
use super::store::{FaultRates, FaultyStore};
use super::{Failure, Options, Summary};

/// When the actors are registered.
const START: Timestamp = Timestamp(1_700_000_000_000);
/// The simulation clock starts here and never goes below it, so no instance's clock (skewed by
/// at most [`SKEW_MS_MAX`]) records an event before its actor's key existed (an attribution
/// failure the audit rightly reports, not a test of the command path).
const CLOCK_FLOOR: Timestamp = Timestamp(START.0 + 2 * SKEW_MS_MAX);
/// Largest skew of a second instance's clock.
const SKEW_MS_MAX: u64 = 1_500;
/// Times `Service::open` is tried under faults before it is opened with faults paused.
const OPEN_ATTEMPTS_MAX: u32 = 8;
/// Passes over the unanswered commands at the finish (faults are off: one should do).
const FINISH_PASSES_MAX: u32 = 3;
/// Steps between loads of every pool through `Service::load_pool` (also after every crash and at
/// the finish); the mirror's own fold of the log is checked after every step.
const LOAD_POOL_EVERY_STEPS: u32 = 4;
/// Shared token names a client may draw (the same names across clients must not interfere).
const SHARED_TOKENS: u32 = 40;

/// One pool as the seed declares it.
#[derive(Debug, Clone)]
struct PoolSpec {
    id: PoolId,
    capacity: u64,
    units: Vec<String>,
    closes_at: Option<Timestamp>,
    window_ms: u64,
    declare_at_step: u32,
}

impl PoolSpec {
    fn declare(&self) -> Action {
        Action::DeclarePool {
            capacity: self.capacity,
            closes_at: self.closes_at,
            units: self.units.clone(),
            idempotency_window_ms: self.window_ms,
        }
    }
}

/// A client: an actor with its token counters.
#[derive(Debug)]
struct Client {
    actor: ActorId,
    next_token: u64,
    shared_used: BTreeSet<u32>,
}

/// Answers to a round's submissions, in the order they arrived.
type Answers = Rc<RefCell<Vec<(usize, Result<Reply, SubmitError>)>>>;

/// What one round runs at once.
#[derive(Debug, Clone, Copy)]
enum Planned {
    /// A command, on an instance the dice pick.
    Submit(usize),
    /// A command on this instance.
    SubmitOn {
        index: usize,
        instance: usize,
    },
    Sweep,
}

/// An instance's clock: the simulation clock moved by a fixed skew (never below zero).
#[derive(Debug)]
struct SkewedClock {
    base: Arc<ManualClock>,
    ahead_ms: i64,
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        let now = i128::from(self.base.now().0) + i128::from(self.ahead_ms);
        Timestamp(u64::try_from(now.max(0)).unwrap_or(u64::MAX))
    }
}

/// The swarm parameters the seed picks.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // read through Debug, in the trace
struct Swarm {
    rates: FaultRates,
    crash_per_mille: u32,
    sweep_percent: u32,
    race_percent: u32,
    round_commands_max: usize,
    /// Skew of each service instance's clock (the first is the simulation clock itself).
    instance_skews_ms: [i64; 2],
    instances: usize,
}

struct World {
    seed: u64,
    options: Options,
    rng: StdRng,
    swarm: Swarm,
    store: Arc<FaultyStore>,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    /// Service instances over the one store (a second one writes the same pools).
    services: Vec<Service>,
    instance_clocks: Vec<Arc<dyn Clock>>,
    sweeper: SweeperKey,
    admin: ActorId,
    clients: Vec<Client>,
    pools: Vec<PoolSpec>,
    model: Model,
    mirror: Mirror,
    high_water: Timestamp,
    /// (instance, pool) whose live projections are behind the log, since which step.
    behind_since: BTreeMap<(usize, PoolId), u32>,
    step: u32,
    trace: VecDeque<String>,
    line: String,
    attempts: u64,
    crashes: u32,
    sweeps: u32,
}

/// Runs one seed.
pub(super) async fn run(seed: u64, options: Options) -> Result<Summary, Failure> {
    let mut world = World::new(seed, options)
        .await
        .map_err(|violation| Failure {
            seed,
            step: 0,
            violation,
            trace: Vec::new(),
            options,
        })?;
    let mut result = Ok(());
    for step in 1..=options.steps {
        world.step = step;
        result = world.one_step().await;
        world.end_line();
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        world.step = options.steps + 1;
        world.line = format!("finish at {}", world.clock.now());
        result = world.finish().await;
        world.end_line();
    }
    match result {
        Ok(()) => Ok(world.summary()),
        Err(violation) => Err(Failure {
            seed,
            step: world.step,
            violation,
            trace: world.trace.iter().cloned().collect(),
            options,
        }),
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    items.choose(rng)
}

fn short(answer: &Result<Reply, SubmitError>) -> String {
    match answer {
        Ok(reply) => {
            let replayed = if reply.replayed { " (replayed)" } else { "" };
            match &reply.outcome {
                Outcome::Rejected(rejection) => format!("rejected {}{replayed}", rejection.code()),
                Outcome::Reserved { reservation, .. } => {
                    format!("reserved {reservation}{replayed}")
                }
                other => format!("{other:?}{replayed}"),
            }
        }
        Err(SubmitError::Rejected(rejection)) => format!("refused {}", rejection.code()),
        Err(SubmitError::Recording(_)) => "recording-failure".to_owned(),
        Err(other) => format!("error {other}"),
    }
}

impl World {
    async fn new(seed: u64, options: Options) -> Result<World, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let per_mille = [0u32, 5, 20, 60];
        let rates = if options.store_faults {
            FaultRates {
                append_fails_before_durable: *pick(&mut rng, &per_mille).unwrap_or(&0),
                append_ack_lost: pick(&mut rng, &per_mille)
                    .copied()
                    .filter(|_| options.lost_acks)
                    .unwrap_or(0),
                read_fails: *pick(&mut rng, &[0u32, 20, 100]).unwrap_or(&0),
            }
        } else {
            FaultRates::default()
        };
        let swarm = Swarm {
            rates,
            crash_per_mille: if options.crashes {
                *pick(&mut rng, &[0u32, 10, 30]).unwrap_or(&0)
            } else {
                0
            },
            sweep_percent: rng.gen_range(5..=40),
            race_percent: rng.gen_range(5..=30),
            round_commands_max: rng.gen_range(1..=8),
            instance_skews_ms: [
                0,
                *pick(&mut rng, &[0i64, SKEW_MS_MAX as i64, -(SKEW_MS_MAX as i64)]).unwrap_or(&0),
            ],
            instances: if options.instances && rng.gen_bool(0.4) {
                2
            } else {
                1
            },
        };
        let store = Arc::new(FaultyStore::new(rng.r#gen(), rates));
        store.pause(true);
        let clock = Arc::new(ManualClock::new(START));
        let metrics = Arc::new(Metrics::new());
        let instance_clocks: Vec<Arc<dyn Clock>> = swarm.instance_skews_ms[..swarm.instances]
            .iter()
            .map(|&ahead_ms| -> Arc<dyn Clock> {
                if ahead_ms == 0 {
                    clock.clone()
                } else {
                    Arc::new(SkewedClock {
                        base: Arc::clone(&clock),
                        ahead_ms,
                    })
                }
            })
            .collect();
        let mut services = Vec::new();
        for instance_clock in &instance_clocks {
            services.push(
                open(&store, instance_clock, &metrics)
                    .await
                    .map_err(|error| format!("cannot open the service: {error}"))?,
            );
        }
        let service = services[0].clone();

        let mut key_bytes = [0u8; 32];
        rng.fill(&mut key_bytes);
        let sweeper = SweeperKey {
            actor: ActorId::new("sweeper"),
            key: SigningKey::from_bytes(&key_bytes),
        };
        let admin = ActorId::new("admin");
        let clients: Vec<Client> = (0..rng.gen_range(2..=6))
            .map(|i| Client {
                actor: ActorId::new(format!("client-{i}")),
                next_token: 0,
                shared_used: BTreeSet::new(),
            })
            .collect();
        let mut registrations = vec![
            (admin.clone(), Role::Admin, admin.clone()),
            (sweeper.actor.clone(), Role::Sweeper, sweeper.actor.clone()),
        ];
        registrations.extend(
            clients
                .iter()
                .map(|client| (client.actor.clone(), Role::Client, admin.clone())),
        );
        for (actor, role, by) in registrations {
            let public_key = if actor == sweeper.actor {
                sweeper.key.verifying_key().to_bytes()
            } else {
                let mut bytes = [0u8; 32];
                rng.fill(&mut bytes);
                SigningKey::from_bytes(&bytes).verifying_key().to_bytes()
            };
            let event = ActorEvent {
                token: IdempotencyToken::new(format!("register-{actor}")),
                actor,
                change: ActorChange::Registered { role, public_key },
                by,
                attestation: Attestation {
                    signed_at: START,
                    signature: Vec::new(),
                },
                at: START,
            };
            service
                .record_actor_event(event)
                .await
                .map_err(|error| format!("cannot register an actor: {error}"))?;
        }

        let steps = options.steps.max(2);
        let mut pools = Vec::new();
        let pool_count = rng.gen_range(1..=3);
        let late_pool = rng.gen_bool(0.3);
        for i in 0..pool_count + usize::from(late_pool) {
            let named = rng.gen_bool(0.3);
            let capacity = rng.gen_range(1..=8u64);
            let units = if named {
                let extra = rng.gen_range(0..=2u64);
                (0..capacity + extra).map(|u| format!("s{u}")).collect()
            } else {
                Vec::new()
            };
            let closes_at = rng
                .gen_bool(0.3)
                .then(|| START.plus_ms(rng.gen_range(60_000..=900_000)));
            let window_ms = *pick(&mut rng, &[240_000u64, 600_000, 3_600_000]).unwrap_or(&600_000);
            let declare_at_step = if i < pool_count {
                1
            } else {
                rng.gen_range(2..=steps / 2 + 1)
            };
            pools.push(PoolSpec {
                id: PoolId::new(format!("p{i}")),
                capacity,
                units,
                closes_at,
                window_ms,
                declare_at_step,
            });
        }
        let mut model = Model::default();
        model.skew_ms = swarm.instance_skews_ms[..swarm.instances]
            .iter()
            .map(|skew| skew.unsigned_abs())
            .max()
            .unwrap_or(0);
        for pool in &pools {
            model.windows.insert(pool.id.clone(), pool.window_ms);
            if let Some(cutoff) = pool.closes_at {
                model.cutoffs.insert(pool.id.clone(), cutoff);
            }
        }
        store.pause(!options.store_faults);
        clock.set(CLOCK_FLOOR);
        let mut world = World {
            seed,
            options,
            rng,
            swarm,
            store,
            clock,
            metrics,
            services,
            instance_clocks,
            sweeper,
            admin,
            clients,
            pools,
            model,
            mirror: Mirror::default(),
            high_water: CLOCK_FLOOR,
            behind_since: BTreeMap::new(),
            step: 0,
            trace: VecDeque::new(),
            line: String::new(),
            attempts: 0,
            crashes: 0,
            sweeps: 0,
        };
        world.line = format!(
            "seed {seed}: {} pools {:?}, {} clients, swarm {:?}",
            world.pools.len(),
            world
                .pools
                .iter()
                .map(|p| (
                    p.id.as_str(),
                    p.capacity,
                    p.units.len(),
                    p.closes_at.map(|c| c.0),
                    p.window_ms,
                    p.declare_at_step
                ))
                .collect::<Vec<_>>(),
            world.clients.len(),
            world.swarm
        );
        world.end_line();
        Ok(world)
    }

    fn end_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if self.trace.len() >= self.options.trace_lines.max(1) {
            self.trace.pop_front();
        }
        self.trace.push_back(std::mem::take(&mut self.line));
    }

    fn note(&mut self, text: &str) {
        if !self.line.is_empty() {
            self.line.push_str("; ");
        }
        self.line.push_str(text);
    }

    async fn one_step(&mut self) -> Result<(), String> {
        self.move_clock();
        let planned = self.plan_round();
        let crash = self.rng.gen_range(0..1000) < self.swarm.crash_per_mille;
        let polls = crash.then(|| self.rng.gen_range(0..6u32));
        self.execute(planned, polls).await?;
        if crash {
            self.crash().await?;
        }
        self.check(crash || self.step.is_multiple_of(LOAD_POOL_EVERY_STEPS))
            .await
    }

    // ---- the clock ----

    fn move_clock(&mut self) {
        let now = self.clock.now();
        let draw = self.rng.gen_range(0..1000);
        let target = if draw < 30 {
            Timestamp(
                now.0
                    .saturating_sub(self.rng.gen_range(1..=20_000))
                    .max(CLOCK_FLOOR.0),
            )
        } else if draw < 90 {
            // Exactly onto a recent hold's expires_at, or a millisecond either side of it.
            let recent = self.model.known.len().saturating_sub(8);
            match pick(&mut self.rng, &self.model.known[recent..]).map(|k| k.expires_at) {
                Some(at) => Timestamp((at.0 + self.rng.gen_range(0..=2) - 1).max(CLOCK_FLOOR.0)),
                None => now.plus_ms(1_000),
            }
        } else if draw < 120 {
            now.plus_ms(self.rng.gen_range(100_000..=300_000))
        } else if draw < 130 {
            let cutoffs: Vec<Timestamp> = self.pools.iter().filter_map(|p| p.closes_at).collect();
            match pick(&mut self.rng, &cutoffs) {
                Some(at) => Timestamp(at.0 + self.rng.gen_range(0..=2) - 1),
                None => now.plus_ms(1_000),
            }
        } else if draw < 300 {
            now.plus_ms(self.rng.gen_range(5_000..=60_000))
        } else {
            now.plus_ms(self.rng.gen_range(0..=2_000))
        };
        self.clock.set(target);
        self.high_water = self.high_water.max(target);
        let delta = i128::from(target.0) - i128::from(now.0);
        self.line = format!("step {} clock {} ({delta:+})", self.step, target.0);
    }

    // ---- planning ----

    fn plan_round(&mut self) -> Vec<Planned> {
        let mut planned = Vec::new();
        let due: Vec<PoolSpec> = self
            .pools
            .iter()
            .filter(|pool| pool.declare_at_step == self.step)
            .cloned()
            .collect();
        for pool in due {
            let token = self.admin_token();
            planned.push(Planned::Submit(self.fresh(
                self.admin.clone(),
                pool.id.clone(),
                token,
                pool.declare(),
            )));
        }
        let commands = self.rng.gen_range(1..=self.swarm.round_commands_max);
        for _ in 0..commands {
            let planned_one = if self.rng.gen_range(0..100) < 15 {
                self.plan_admin()
            } else {
                let client = self.rng.gen_range(0..self.clients.len());
                self.plan_client(client)
            };
            planned.extend(planned_one.map(Planned::Submit));
        }
        if self.rng.gen_range(0..100) < self.swarm.race_percent {
            self.plan_race(&mut planned);
        }
        if self.rng.gen_range(0..100) < self.swarm.sweep_percent {
            planned.push(Planned::Sweep);
        }
        // The same command twice at once: the second must replay the first.
        if self.rng.gen_range(0..100) < 5
            && let Some(Planned::Submit(index)) = pick(&mut self.rng, &planned).copied()
        {
            planned.push(Planned::Submit(index));
        }
        planned.shuffle(&mut self.rng);
        planned
    }

    fn fresh(
        &mut self,
        actor: ActorId,
        pool: PoolId,
        token: IdempotencyToken,
        action: Action,
    ) -> usize {
        self.model.add(Intent {
            actor,
            pool,
            token,
            action,
            purpose: Purpose::Fresh,
            attempts: 0,
            first_clock: None,
            status: Status::Unresolved,
            unverified: false,
            fresh_answers: 0,
            maybe_recorded: false,
        })
    }

    fn admin_token(&mut self) -> IdempotencyToken {
        let n = self.model.intents.len();
        IdempotencyToken::new(format!("admin-{n}"))
    }

    fn client_token(&mut self, client: usize) -> IdempotencyToken {
        let shared = self.rng.gen_range(0..100) < 15;
        let state = &mut self.clients[client];
        if shared {
            let k = (0..SHARED_TOKENS).find(|k| !state.shared_used.contains(k));
            if let Some(k) = k {
                state.shared_used.insert(k);
                return IdempotencyToken::new(format!("shared-{k}"));
            }
        }
        state.next_token += 1;
        IdempotencyToken::new(format!("c{client}-{}", state.next_token))
    }

    /// An unresolved command of `actor` to retry, if the dice say so.
    fn retry_of(&mut self, actor: &ActorId) -> Option<usize> {
        let mine: Vec<usize> = self
            .model
            .unresolved()
            .into_iter()
            .filter(|&index| self.model.intents[index].actor == *actor)
            .collect();
        if mine.is_empty() || !self.rng.gen_bool(0.6) {
            return None;
        }
        pick(&mut self.rng, &mine).copied()
    }

    fn reserve_action(&mut self, pool: &PoolSpec, requester: &ActorId) -> Action {
        let rng = &mut self.rng;
        let (resource, count) = if pool.units.is_empty() {
            (
                "seat".to_owned(),
                if rng.gen_range(0..10) == 0 {
                    3
                } else {
                    rng.gen_range(1..=2)
                },
            )
        } else if rng.gen_range(0..20) == 0 {
            ("nowhere".to_owned(), 1)
        } else {
            let unit = pick(rng, &pool.units).cloned().unwrap_or_default();
            (unit, if rng.gen_range(0..20) == 0 { 2 } else { 1 })
        };
        let duration_ms = if rng.gen_range(0..10) == 0 {
            1_000
        } else {
            rng.gen_range(1_000..=90_000)
        };
        Action::Reserve {
            resource,
            requester: requester.to_string(),
            duration_ms,
            count,
        }
    }

    fn known_target(&mut self) -> Option<(PoolId, u64)> {
        self.known_target_of(None)
    }

    /// A reservation the model knows, made by `owner` if given (a client confirms and cancels
    /// its own reservations; another's is `not-owner`).
    fn known_target_of(&mut self, owner: Option<&ActorId>) -> Option<(PoolId, u64)> {
        let intents = &self.model.intents;
        let made_by = |known: &&crate::sim::model::Known| {
            owner.is_none_or(|owner| intents[known.intent].actor == *owner)
        };
        let mine: Vec<&crate::sim::model::Known> =
            self.model.known.iter().filter(made_by).collect();
        // Mostly recent reservations, where the races are.
        let recent = mine.len().saturating_sub(12);
        let slice = if self.rng.gen_bool(0.7) {
            &mine[recent..]
        } else {
            &mine[..]
        };
        pick(&mut self.rng, slice).map(|known| (known.id.pool.clone(), known.id.seq))
    }

    /// The client that made reservation `seq` of `pool`, if the model knows it.
    fn owner_client(&self, pool: &PoolId, seq: u64) -> Option<usize> {
        let known = self
            .model
            .known
            .iter()
            .find(|known| known.id.pool == *pool && known.id.seq == seq)?;
        let actor = &self.model.intents[known.intent].actor;
        self.clients
            .iter()
            .position(|client| client.actor == *actor)
    }

    fn any_target(&mut self) -> Option<(PoolId, u64)> {
        let pool = pick(&mut self.rng, &self.pools)?.id.clone();
        let made = self
            .model
            .known
            .iter()
            .filter(|known| known.id.pool == pool)
            .count() as u64;
        let seq = self.rng.gen_range(1..=made + 3);
        Some((pool, seq))
    }

    fn plan_client(&mut self, client: usize) -> Option<usize> {
        let actor = self.clients[client].actor.clone();
        if let Some(index) = self.retry_of(&actor) {
            return Some(index);
        }
        let draw = self.rng.gen_range(0..100);
        let target = match draw {
            40..75 => self.known_target_of(Some(&actor)),
            // Any reservation, any client's: mostly another's, refused as `not-owner`.
            75..82 => self.any_target(),
            _ => None,
        };
        let action = match (draw, target) {
            (40..60, Some((pool, seq))) => {
                Some((pool, Action::ConfirmReservation { reservation: seq }))
            }
            (60..75, Some((pool, seq))) => {
                Some((pool, Action::CancelReservation { reservation: seq }))
            }
            (75..82, Some((pool, seq))) => Some((
                pool,
                if self.rng.gen_bool(0.5) {
                    Action::ConfirmReservation { reservation: seq }
                } else {
                    Action::CancelReservation { reservation: seq }
                },
            )),
            (82..91, _) => {
                return self
                    .probe(&actor, false)
                    .or_else(|| self.plan_reserve(client));
            }
            (91..100, _) => {
                return self
                    .probe(&actor, true)
                    .or_else(|| self.plan_reserve(client));
            }
            _ => None,
        };
        match action {
            Some((pool, action)) => {
                let token = self.client_token(client);
                Some(self.fresh(actor, pool, token, action))
            }
            None => self.plan_reserve(client),
        }
    }

    fn plan_reserve(&mut self, client: usize) -> Option<usize> {
        let pool = pick(&mut self.rng, &self.pools)?.clone();
        let actor = self.clients[client].actor.clone();
        let action = self.reserve_action(&pool, &actor);
        let token = self.client_token(client);
        Some(self.fresh(actor, pool.id, token, action))
    }

    /// A reuse (same command, `collide` false) or a collision (other parameters) under the
    /// token of one of `actor`'s acknowledged commands still certainly in its window.
    fn probe(&mut self, actor: &ActorId, collide: bool) -> Option<usize> {
        let candidates: Vec<usize> = self
            .model
            .intents
            .iter()
            .enumerate()
            .filter(|(index, intent)| {
                intent.actor == *actor
                    && intent.purpose == Purpose::Fresh
                    && intent.reply().is_some()
                    && self.model.certainly_in_window(*index, self.high_water)
            })
            .map(|(index, _)| index)
            .collect();
        let of = *pick(&mut self.rng, &candidates)?;
        let original = self.model.intents[of].clone();
        let (action, purpose) = if collide {
            let action = match &original.action {
                Action::Reserve {
                    resource,
                    requester,
                    duration_ms,
                    count,
                } => Action::Reserve {
                    resource: resource.clone(),
                    requester: requester.clone(),
                    duration_ms: if *duration_ms < HOLD_DURATION_MS_MAX {
                        duration_ms + 1
                    } else {
                        duration_ms - 1
                    },
                    count: *count,
                },
                Action::ConfirmReservation { reservation } => Action::CancelReservation {
                    reservation: *reservation,
                },
                Action::CancelReservation { reservation }
                | Action::ExpireReservation { reservation } => Action::ConfirmReservation {
                    reservation: *reservation,
                },
                Action::AdjustCapacity { capacity } => Action::AdjustCapacity {
                    capacity: capacity + 1,
                },
                Action::DeclarePool { .. } | Action::ClosePool => {
                    Action::AdjustCapacity { capacity: 1 }
                }
            };
            (action, Purpose::Collide { with: of })
        } else {
            (original.action.clone(), Purpose::Reuse { of })
        };
        Some(self.model.add(Intent {
            purpose,
            action,
            attempts: 0,
            first_clock: None,
            status: Status::Unresolved,
            unverified: false,
            fresh_answers: 0,
            maybe_recorded: false,
            ..original
        }))
    }

    fn plan_admin(&mut self) -> Option<usize> {
        let admin = self.admin.clone();
        if let Some(index) = self.retry_of(&admin) {
            return Some(index);
        }
        let draw = self.rng.gen_range(0..100);
        let (pool, action) = match draw {
            0..33 => {
                let (pool, seq) = self.known_target()?;
                (pool, Action::ExpireReservation { reservation: seq })
            }
            // The back office confirms or cancels a client's reservation on its behalf.
            33..45 => {
                let (pool, seq) = self.known_target()?;
                let action = if self.rng.gen_bool(0.5) {
                    Action::ConfirmReservation { reservation: seq }
                } else {
                    Action::CancelReservation { reservation: seq }
                };
                (pool, action)
            }
            45..65 => {
                let pool = pick(&mut self.rng, &self.pools)?.clone();
                let capacity = self.rng.gen_range(0..=pool.capacity + 3);
                (pool.id, Action::AdjustCapacity { capacity })
            }
            65..75 => {
                let pool = pick(&mut self.rng, &self.pools)?.clone();
                (pool.id.clone(), pool.declare())
            }
            75..78 => (
                pick(&mut self.rng, &self.pools)?.id.clone(),
                Action::ClosePool,
            ),
            78..90 => return self.probe(&admin, false),
            _ => return self.probe(&admin, true),
        };
        let token = self.admin_token();
        Some(self.fresh(admin, pool, token, action))
    }

    /// Two commands racing for one reservation in the same round: a client's cancel against an
    /// administrator's expiry, or a client's confirm against the sweeper.
    fn plan_race(&mut self, planned: &mut Vec<Planned>) {
        let Some((pool, seq)) = self.known_target() else {
            return;
        };
        // The owner races the sweeper or the administrator.
        let client = self
            .owner_client(&pool, seq)
            .unwrap_or_else(|| self.rng.gen_range(0..self.clients.len()));
        let actor = self.clients[client].actor.clone();
        let token = self.client_token(client);
        if self.rng.gen_bool(0.5) {
            let cancel = self.fresh(
                actor,
                pool.clone(),
                token,
                Action::CancelReservation { reservation: seq },
            );
            let admin_token = self.admin_token();
            let expire = self.fresh(
                self.admin.clone(),
                pool,
                admin_token,
                Action::ExpireReservation { reservation: seq },
            );
            planned.push(Planned::Submit(cancel));
            planned.push(Planned::Submit(expire));
            self.note(&format!("race cancel/expire on {seq}"));
        } else {
            let confirm = self.fresh(
                actor,
                pool,
                token,
                Action::ConfirmReservation { reservation: seq },
            );
            planned.push(Planned::Submit(confirm));
            planned.push(Planned::Sweep);
            self.note(&format!("race confirm/sweep on {seq}"));
        }
    }

    // ---- running a round ----

    fn command(&self, index: usize) -> Command {
        let intent = &self.model.intents[index];
        Command {
            pool: intent.pool.clone(),
            actor: intent.actor.clone(),
            role: if intent.actor == self.admin {
                Role::Admin
            } else if intent.actor.as_str() == "sweeper" {
                Role::Sweeper
            } else {
                Role::Client
            },
            attestation: Attestation {
                signed_at: self.clock.now(),
                signature: Vec::new(),
            },
            token: intent.token.clone(),
            digest: params_digest(&intent.action),
            action: intent.action.clone(),
            batch: None,
        }
    }

    /// Runs `planned` at once, in order. With `polls`, the round is abandoned after that many
    /// polls (a crash): unanswered commands stay unresolved.
    async fn execute(&mut self, planned: Vec<Planned>, polls: Option<u32>) -> Result<(), String> {
        let clock = self.clock.now();
        self.model.next_round();
        let answers: Answers = Rc::default();
        let mut work: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
        for item in &planned {
            let instance = self.rng.gen_range(0..self.services.len());
            match *item {
                Planned::Submit(index) | Planned::SubmitOn { index, .. } => {
                    let instance = match *item {
                        Planned::SubmitOn { instance, .. } => instance,
                        _ => instance,
                    };
                    self.model.attempted(index, clock);
                    self.attempts += 1;
                    let command = self.command(index);
                    let service = self.services[instance].clone();
                    let answers = Rc::clone(&answers);
                    work.push(Box::pin(async move {
                        let answer = service.submit(command).await;
                        answers.borrow_mut().push((index, answer));
                    }));
                }
                Planned::Sweep => {
                    self.sweeps += 1;
                    let service = self.services[instance].clone();
                    let sweeper = self.sweeper.clone();
                    work.push(Box::pin(async move {
                        sweep_once(&service, &sweeper).await;
                    }));
                }
            }
        }
        let all = join_all(work);
        match polls {
            None => {
                all.await;
            }
            Some(polls) => {
                let mut all = std::pin::pin!(all);
                for _ in 0..polls {
                    if futures::poll!(all.as_mut()).is_ready() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        let answers = std::mem::take(&mut *answers.borrow_mut());
        let answered: BTreeSet<usize> = answers.iter().map(|(index, _)| *index).collect();
        for (index, answer) in answers {
            let intent = &self.model.intents[index];
            let text = format!(
                "{} {} {}#{} [{}] -> {}",
                intent.actor,
                intent.action.kind(),
                intent.pool,
                intent.action.reservation().unwrap_or(0),
                intent.token,
                short(&answer)
            );
            self.note(&text);
            self.model.answered(index, answer, clock, self.high_water)?;
        }
        for item in planned {
            match item {
                Planned::Submit(index) | Planned::SubmitOn { index, .. }
                    if !answered.contains(&index) =>
                {
                    let intent = &mut self.model.intents[index];
                    intent.maybe_recorded = true;
                    if intent.purpose != Purpose::Fresh && intent.status == Status::Unresolved {
                        intent.status = Status::Abandoned;
                    }
                    let text = format!("{} #{index} unanswered", intent.actor);
                    self.note(&text);
                }
                Planned::Sweep if polls.is_none() => self.note("sweep"),
                _ => {}
            }
        }
        Ok(())
    }

    /// Drops the service mid-round (after `execute` abandoned it) and opens a new one over the
    /// same store: the projections are rebuilt from the log.
    async fn crash(&mut self) -> Result<(), String> {
        self.crashes += 1;
        let instance = self.rng.gen_range(0..self.services.len());
        self.services[instance].close().await;
        let mut attempts = 0;
        let service = loop {
            attempts += 1;
            if attempts == OPEN_ATTEMPTS_MAX {
                self.store.pause(true);
            }
            match open(&self.store, &self.instance_clocks[instance], &self.metrics).await {
                Ok(service) => break service,
                Err(error) if attempts < OPEN_ATTEMPTS_MAX => {
                    self.note(&format!("open failed: {error}"));
                }
                Err(error) => {
                    return Err(format!("cannot reopen the service without faults: {error}"));
                }
            }
        };
        self.store.pause(!self.options.store_faults);
        self.services[instance] = service;
        self.note(&format!(
            "CRASH of instance {instance}, reopened after {attempts} attempt(s)"
        ));
        Ok(())
    }

    // ---- checks ----

    /// The checks after a step, with faults paused so they read the log as it is.
    async fn check(&mut self, load_pools: bool) -> Result<(), String> {
        self.store.pause(true);
        let result = self.check_paused(load_pools).await;
        self.store.pause(!self.options.store_faults);
        result
    }

    async fn check_paused(&mut self, load_pools: bool) -> Result<(), String> {
        self.mirror.catch_up(self.store.inner()).await?;
        self.mirror.check_pools()?;
        for (instance, service) in self.services.iter().enumerate() {
            self.mirror
                .check_projections(instance, service.projections())?;
            for (pool, folded) in self.mirror.pools() {
                let key = (instance, pool.clone());
                if service.projections().next_version(pool) < folded.events_applied() {
                    self.behind_since.entry(key).or_insert(self.step);
                } else {
                    self.behind_since.remove(&key);
                }
            }
        }
        // Invariant 6: every acknowledged outcome is in the log.
        for intent in self
            .model
            .intents
            .iter_mut()
            .filter(|intent| intent.unverified)
        {
            intent.unverified = false;
            let Some(reply) = intent.reply() else {
                continue;
            };
            let uses = self
                .mirror
                .token_uses(&intent.pool, &intent.actor, &intent.token);
            if !uses.iter().any(|used| used.outcome == reply.outcome) {
                return Err(format!(
                    "{} token {} on {}: acknowledged {:?} but the log records {:?} (invariant 6)",
                    intent.actor, intent.token, intent.pool, reply.outcome, uses
                ));
            }
        }
        // The aggregates as the command path loads them equal the fold of the log.
        let pools = if load_pools {
            self.mirror.pools().iter().collect()
        } else {
            Vec::new()
        };
        for (id, folded) in pools {
            let loaded = self.services[0]
                .load_pool(id)
                .await
                .map_err(|error| format!("load_pool {id}: {error}"))?;
            if loaded != *folded {
                return Err(format!(
                    "load_pool {id} differs from the fold of the log: allocated {} vs {}, events {} vs {}",
                    loaded.allocated(),
                    folded.allocated(),
                    loaded.events_applied(),
                    folded.events_applied()
                ));
            }
        }
        Ok(())
    }

    /// Faults off: every unanswered command retried until answered, then the whole-log checks.
    async fn finish(&mut self) -> Result<(), String> {
        self.store.pause(true);
        self.options.store_faults = false;
        for _ in 0..FINISH_PASSES_MAX {
            let unresolved = self.model.unresolved();
            if unresolved.is_empty() {
                break;
            }
            self.execute(unresolved.into_iter().map(Planned::Submit).collect(), None)
                .await?;
        }
        let stuck = self.model.unresolved();
        if !stuck.is_empty() {
            return Err(format!(
                "{} command(s) still unanswered after {FINISH_PASSES_MAX} retries without faults: {:?}",
                stuck.len(),
                stuck
                    .iter()
                    .map(|&i| &self.model.intents[i])
                    .collect::<Vec<_>>()
            ));
        }
        self.execute(vec![Planned::Sweep], None).await?;
        // One more command on every pool, so each has appended since the store healed.
        // One more command on every pool from each instance in turn, the store healthy: an
        // instance that appends to a pool has every earlier event of that pool in its
        // projections (whoever wrote it), so right after its round it is current.
        let client = self.clients[0].actor.clone();
        for instance in 0..self.services.len() {
            let mut touch = Vec::new();
            for pool in self.pools.clone() {
                let action = self.reserve_action(&pool, &client);
                let token = IdempotencyToken::new(format!("finish-{instance}-{}", pool.id));
                let index = self.fresh(client.clone(), pool.id, token, action);
                touch.push(Planned::SubmitOn { index, instance });
            }
            self.execute(touch, None).await?;
            self.check(true).await?;
            self.mirror
                .check_projections_current(instance, self.services[instance].projections())
                .map_err(|violation| {
                    let behind: Vec<String> = self
                        .behind_since
                        .iter()
                        .filter(|((i, _), _)| *i == instance)
                        .map(|((_, pool), step)| format!("{pool} since step {step}"))
                        .collect();
                    format!("{violation} (behind the log: {})", behind.join(", "))
                })?;
        }
        self.check_no_half_applied()?;

        // Replay from nothing equals the live state (of the instance that wrote last).
        let (pools, projections) = replay_from_scratch(self.store.inner()).await?;
        let replayed = projections.contents();
        let last = self.services.len() - 1;
        if let Some(difference) =
            contents_difference(&self.services[last].projections().contents(), &replayed)
        {
            return Err(format!(
                "replay from scratch differs from the projections of instance {last}: {difference}"
            ));
        }
        for (id, pool) in &pools {
            let loaded = self.services[last]
                .load_pool(id)
                .await
                .map_err(|error| format!("load_pool {id}: {error}"))?;
            if loaded != *pool {
                return Err(format!("replay from scratch differs from load_pool {id}"));
            }
        }
        // A restart rebuilds the same projections.
        for service in &self.services {
            service.close().await;
        }
        let restarted = open(&self.store, &self.instance_clocks[0], &self.metrics)
            .await
            .map_err(|error| format!("cannot reopen at the finish: {error}"))?;
        if let Some(difference) =
            contents_difference(&restarted.projections().contents(), &replayed)
        {
            return Err(format!(
                "projections after a restart differ from the replay: {difference}"
            ));
        }
        audit_passes(self.mirror.records())
    }

    /// Every command whose whole life stayed within its token's window is recorded exactly once
    /// if acknowledged, and not at all if refused: nothing is half there or there twice.
    fn check_no_half_applied(&self) -> Result<(), String> {
        for (index, intent) in self.model.intents.iter().enumerate() {
            if intent.purpose != Purpose::Fresh
                || !self.model.certainly_in_window(index, self.high_water)
            {
                continue;
            }
            let uses = self
                .mirror
                .token_uses(&intent.pool, &intent.actor, &intent.token);
            let fine = match &intent.status {
                Status::Acknowledged(reply) => uses.len() == 1 && uses[0].outcome == reply.outcome,
                // Refused outright, nothing may be recorded; but a copy refused by a stale
                // instance while another attempt of it failed may sit beside that attempt.
                Status::Refused(_) if intent.maybe_recorded => uses.len() <= 1,
                Status::Refused(_) => uses.is_empty(),
                Status::Unresolved | Status::Abandoned => true,
            };
            if !fine {
                return Err(format!(
                    "intent #{index} {} token {} on {} ({:?}, {} attempt(s)) is {:?} but the log records {:?}",
                    intent.actor,
                    intent.token,
                    intent.pool,
                    intent.action,
                    intent.attempts,
                    intent.status,
                    uses
                ));
            }
        }
        Ok(())
    }

    fn summary(&self) -> Summary {
        let mut hasher = DefaultHasher::new();
        for record in self.mirror.records() {
            record.position().hash(&mut hasher);
            record.stream().hash(&mut hasher);
            if let Some(pool) = record.pool_event() {
                format!("{:?}", pool.event).hash(&mut hasher);
            }
        }
        Summary {
            seed: self.seed,
            steps: self.options.steps,
            attempts: self.attempts,
            acknowledged: self
                .model
                .intents
                .iter()
                .filter(|intent| intent.reply().is_some())
                .count() as u64,
            reservations: self.model.known.len(),
            events: self.mirror.events(),
            crashes: self.crashes,
            sweeps: self.sweeps,
            faults: self.store.stats(),
            log_digest: hasher.finish(),
        }
    }
}

async fn open(
    store: &Arc<FaultyStore>,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> Result<Service, allot_server::service::LoadError> {
    let store: Arc<dyn EventStore> = store.clone();
    Service::open(
        store,
        Arc::clone(clock),
        Arc::new(Projections::new()),
        Arc::clone(metrics),
    )
    .await
}
