//! Crash loop against the real binary: `allot serve` under load, SIGKILL at a random moment,
//! restart on the same data directory, check that nothing acknowledged was lost and nothing was
//! done twice; repeat.
//!
//! ```text
//! cargo test -p allot-tests --test crash_loop                      # CI: 5 kills
//! cargo build --release -p allot-infra --bin allot && \
//!   CRASH_KILLS=100 cargo test --release -p allot-tests --test crash_loop -- --nocapture
//! ```
//! `CRASH_SEED` replays a run's kill moments and load mix (the seed is printed).
//!
//! The load client (one client actor, [`WORKERS`] concurrent requests) records every command it
//! sends. A command is *acknowledged* when a complete answer came back that the service keeps
//! against the token (2xx, or a journaled 404/409 rejection); a transport error or a 503 leaves it
//! *pending*. After each restart, before any new load:
//!
//! 1. snapshot: every pool's counters and the reservations that are new or were touched; each
//!    reservation must come from exactly one reserve command we sent (unique resource names), an
//!    acknowledged reserve must be at the reservation id it was told, an acknowledged confirm or
//!    cancel must show, and a pending command may show whole or not at all;
//! 2. resolution: every pending command is retried with its token and payload; it must replay
//!    (`Idempotent-Replayed: true`) exactly when the snapshot showed its effect, and otherwise
//!    take effect now (never a second time);
//! 3. replay: the round's acknowledged commands (and a sample of older ones) are retried and must
//!    answer `Idempotent-Replayed: true` with the status and body first acknowledged;
//! 4. counters: each pool's reservation, confirm, release and capacity-rejection counts equal the
//!    model's, and `allocated` equals the reservations still holding a slot.
//!
//! At the end every reservation of every pool is read and compared, and `allot audit DIR` must
//! exit 0 if the binary has that subcommand.

#[path = "../src/bin/soak/allot_process.rs"]
mod allot_process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_client::{Answer, Client};
use allot_domain::{Action, ActorId, PoolId, ReservationId, Role};
use allot_process::{Server, locate_allot};
use allot_server::identity::KeyFile;
use allot_tests::seeded::Rng;
use ed25519_dalek::SigningKey;
use serde_json::Value;

/// Kills in the default (CI) run; `CRASH_KILLS` overrides.
const KILLS_DEFAULT: u32 = 5;
/// Concurrent requests of the load client.
const WORKERS: usize = 8;
/// Load time before a kill, drawn uniformly from this range (milliseconds).
const LOAD_MS_MIN: u64 = 150;
const LOAD_MS_MAX: u64 = 1_500;
/// Older acknowledged commands retried after each restart, besides all of the last round's.
const OLDER_REPLAYS_PER_ROUND: usize = 64;
/// The pools: two roomy ones and a tight one (capacity rejections are journaled and replayed).
const POOLS: [(&str, u64); 3] = [("crash-a", 1_000_000), ("crash-b", 1_000_000), ("tight", 3)];
/// Attempts to resolve a pending command that keeps answering 503.
const RESOLVE_ATTEMPTS_MAX: u32 = 50;

/// What we believe about a reservation from acknowledged answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Held, or expired by the sweeper: nothing we sent ended it.
    Open,
    Confirmed,
    Released,
}

#[derive(Debug)]
struct Reservation {
    resource: String,
    known: Known,
}

/// One command the load client sent, and what came of it.
#[derive(Debug)]
struct Entry {
    pool: PoolId,
    action: Action,
    token: String,
    round: u32,
    /// The acknowledged answer; `None` while pending.
    answer: Option<Answer>,
}

#[derive(Default)]
struct Model {
    entries: Vec<Entry>,
    /// resource name → index of the reserve command that used it (each is used once).
    reserve_by_resource: HashMap<String, usize>,
    reservations: BTreeMap<ReservationId, Reservation>,
    /// Reservations that may still get a confirm or cancel from us.
    open: Vec<ReservationId>,
    /// Journaled `pool-capacity-exceeded` answers per pool.
    capacity_rejections: HashMap<PoolId, u64>,
    /// Reservations an acknowledged command changed since the last check.
    touched: HashSet<ReservationId>,
    acknowledged: u64,
}

/// Whether the service keeps this answer against the token (and will replay it).
fn is_acknowledged(answer: &Answer) -> bool {
    matches!(answer.status, 200 | 201 | 404 | 409)
}

fn outcome(answer: &Answer) -> Option<&str> {
    answer.body.get("outcome").and_then(Value::as_str)
}

fn answered_reservation(answer: &Answer) -> Option<ReservationId> {
    answer
        .body
        .get("reservation_id")
        .and_then(Value::as_str)
        .and_then(ReservationId::parse)
}

fn target(entry: &Entry) -> Option<ReservationId> {
    entry.action.reservation().map(|seq| ReservationId {
        pool: entry.pool.clone(),
        seq,
    })
}

impl Model {
    /// Folds an acknowledged answer of entry `index` into the model.
    fn acknowledge(&mut self, index: usize, answer: Answer) {
        assert!(
            is_acknowledged(&answer),
            "not an acknowledgement: {answer:?}"
        );
        let entry = &self.entries[index];
        let pool = entry.pool.clone();
        match (&entry.action, outcome(&answer)) {
            (Action::Reserve { resource, .. }, Some("reserved")) => {
                let id = answered_reservation(&answer).expect("reserved answer names its id");
                assert_eq!(id.pool, pool, "reservation in another pool: {answer:?}");
                let previous = self.reservations.insert(
                    id.clone(),
                    Reservation {
                        resource: resource.clone(),
                        known: Known::Open,
                    },
                );
                assert!(
                    previous.is_none(),
                    "reservation {id} was answered to two reserve commands: {previous:?} and {}",
                    entry.token
                );
                self.touched.insert(id.clone());
                self.open.push(id);
            }
            (Action::ConfirmReservation { .. }, Some("confirmed"))
            | (Action::CancelReservation { .. }, Some("released")) => {
                let id = target(entry).expect("confirm and cancel name a reservation");
                let confirmed = matches!(entry.action, Action::ConfirmReservation { .. });
                let reservation = self
                    .reservations
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("{id} was ended but never reserved"));
                assert_eq!(
                    reservation.known,
                    Known::Open,
                    "{id} ended twice (second by {})",
                    entry.token
                );
                reservation.known = if confirmed {
                    Known::Confirmed
                } else {
                    Known::Released
                };
                self.touched.insert(id);
            }
            (_, Some(other)) => panic!("unexpected outcome {other} for {entry:?}"),
            (_, None) => {
                let code = answer.code().unwrap_or_default();
                assert!(
                    matches!(
                        code,
                        "pool-capacity-exceeded" | "not-held" | "window-elapsed"
                    ),
                    "unexpected journaled rejection for {entry:?}: {answer:?}"
                );
                if code == "pool-capacity-exceeded" {
                    *self.capacity_rejections.entry(pool).or_default() += 1;
                }
            }
        }
        self.entries[index].answer = Some(answer);
        self.acknowledged += 1;
    }

    fn pending(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].answer.is_none())
            .collect()
    }
}

/// Locks the model; a worker that panicked already failed the test.
fn lock(model: &Mutex<Model>) -> std::sync::MutexGuard<'_, Model> {
    model
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The load client of one round: sends commands until `stop`, recording each.
async fn worker(
    client: Client,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    round: u32,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut sent = 0u64;
    while !stop.load(Ordering::SeqCst) {
        sent += 1;
        let roll = rng.below(100);
        // A retry of an acknowledged command, checked on the spot.
        if roll >= 90 {
            let retry = {
                let model = lock(&model);
                let acked: Vec<&Entry> = model
                    .entries
                    .iter()
                    .rev()
                    .take(256)
                    .filter(|e| e.answer.is_some())
                    .collect();
                (!acked.is_empty()).then(|| {
                    let e = acked[rng.below(acked.len() as u64) as usize];
                    (
                        e.pool.clone(),
                        e.action.clone(),
                        e.token.clone(),
                        e.answer.clone(),
                    )
                })
            };
            if let Some((pool, action, token, Some(first))) = retry
                && let Ok(again) = client.send(&pool, &action, &token).await
                && again.status != 503
            {
                assert_replays(&token, &first, &again);
            }
            continue;
        }
        let (pool, action) = if roll < 55 {
            let pool = match rng.below(10) {
                0 => POOLS[2].0,
                n => POOLS[(n % 2) as usize].0,
            };
            let duration_ms = if rng.below(2) == 0 {
                rng.between(1_000, 2_500)
            } else {
                rng.between(60_000, 600_000)
            };
            let action = Action::Reserve {
                resource: format!("r{round}w{seed:x}n{sent}"),
                requester: "crash-loop".to_owned(),
                duration_ms,
                count: 1,
            };
            (PoolId::new(pool), action)
        } else {
            let picked = {
                let mut model = lock(&model);
                if model.open.is_empty() {
                    None
                } else {
                    let i = rng.below(model.open.len() as u64) as usize;
                    Some(model.open.swap_remove(i))
                }
            };
            let Some(id) = picked else {
                tokio::task::yield_now().await;
                continue;
            };
            let action = if roll < 75 {
                Action::ConfirmReservation {
                    reservation: id.seq,
                }
            } else {
                Action::CancelReservation {
                    reservation: id.seq,
                }
            };
            (id.pool, action)
        };
        let token = format!("crash-r{round}-{seed:x}-{sent}");
        let index = {
            let mut model = lock(&model);
            if let Action::Reserve { resource, .. } = &action {
                let index = model.entries.len();
                model.reserve_by_resource.insert(resource.clone(), index);
            }
            model.entries.push(Entry {
                pool: pool.clone(),
                action: action.clone(),
                token: token.clone(),
                round,
                answer: None,
            });
            model.entries.len() - 1
        };
        match client.send(&pool, &action, &token).await {
            Ok(answer) if is_acknowledged(&answer) => lock(&model).acknowledge(index, answer),
            Ok(answer) if answer.status == 503 => {}
            Ok(answer) => panic!("unexpected answer to {token} {action:?}: {answer:?}"),
            // The server died under this request: it stays pending.
            Err(_) => {}
        }
    }
}

fn assert_replays(token: &str, first: &Answer, again: &Answer) {
    assert!(
        again.replayed,
        "retry of acknowledged token {token} was not a replay: first {first:?}, retry {again:?}"
    );
    // The answer that recorded the event carries its receipt; a replay answers the same
    // outcome without one.
    let mut recorded = first.body.clone();
    if let Some(body) = recorded.as_object_mut() {
        body.remove("receipt");
    }
    assert_eq!(
        (again.status, &again.body),
        (first.status, &recorded),
        "retry of acknowledged token {token} answered differently"
    );
}

/// A reservation as the server shows it.
struct Shown {
    resource: String,
    state: String,
}

async fn show(reader: &Client, id: &ReservationId) -> Shown {
    let answer = reader.reservation(id).await.expect("read reservation");
    assert_eq!(answer.status, 200, "reservation {id}: {answer:?}");
    let text = |name: &str| {
        answer
            .body
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Shown {
        resource: text("resource"),
        state: text("state"),
    }
}

async fn pool_counters(reader: &Client, pool: &PoolId) -> Value {
    let answer = reader.pool(pool).await.expect("read pool");
    assert_eq!(answer.status, 200, "pool {pool}: {answer:?}");
    answer.body
}

fn counter(body: &Value, name: &str) -> u64 {
    body.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("pool counter {name} missing: {body}"))
}

/// What the snapshot showed of pending commands: the reservation a pending reserve created,
/// and the reservations a pending confirm or cancel visibly ended.
#[derive(Default)]
struct Landed {
    reserves: HashMap<usize, ReservationId>,
    endings: HashSet<ReservationId>,
}

/// Step 1: read what the restarted server shows and check it against the model.
async fn snapshot(reader: &Client, model: &Model, everything: bool) -> (Landed, usize) {
    let mut landed = Landed::default();
    let pending = model.pending();
    let mut pending_targets: HashMap<ReservationId, usize> = HashMap::new();
    let mut pending_reserves: HashMap<PoolId, u64> = HashMap::new();
    for &i in &pending {
        let entry = &model.entries[i];
        match target(entry) {
            Some(id) => {
                pending_targets.insert(id, i);
            }
            None => *pending_reserves.entry(entry.pool.clone()).or_default() += 1,
        }
    }
    let mut read = 0;
    for (name, _) in POOLS {
        let pool = PoolId::new(name);
        let body = pool_counters(reader, &pool).await;
        let shown = counter(&body, "reservations");
        let known = model
            .reservations
            .keys()
            .filter(|id| id.pool == pool)
            .count() as u64;
        let maybe = pending_reserves.get(&pool).copied().unwrap_or(0);
        assert!(
            (known..=known + maybe).contains(&shown),
            "pool {pool} shows {shown} reservations; acknowledged {known}, pending {maybe}"
        );
        for seq in 1..=shown {
            let id = ReservationId {
                pool: pool.clone(),
                seq,
            };
            let modeled = model.reservations.get(&id);
            let look = everything
                || modeled.is_none()
                || model.touched.contains(&id)
                || pending_targets.contains_key(&id);
            if !look {
                continue;
            }
            read += 1;
            let seen = show(reader, &id).await;
            let Some(&reserve) = model.reserve_by_resource.get(&seen.resource) else {
                panic!(
                    "{id} holds {}, which no command of ours reserved",
                    seen.resource
                );
            };
            match modeled {
                Some(reservation) => {
                    assert_eq!(
                        reservation.resource, seen.resource,
                        "{id} is not the reservation it was acknowledged as"
                    );
                    let allowed: &[&str] = match reservation.known {
                        Known::Confirmed => &["confirmed"],
                        Known::Released => &["released"],
                        Known::Open if pending_targets.contains_key(&id) => {
                            &["held", "expired", "confirmed", "released"]
                        }
                        Known::Open => &["held", "expired"],
                    };
                    assert!(
                        allowed.contains(&seen.state.as_str()),
                        "{id} is {} but the acknowledged commands say {:?}",
                        seen.state,
                        reservation.known
                    );
                    if reservation.known == Known::Open
                        && matches!(seen.state.as_str(), "confirmed" | "released")
                    {
                        landed.endings.insert(id.clone());
                    }
                }
                None => {
                    let entry = &model.entries[reserve];
                    assert!(
                        entry.answer.is_none(),
                        "{id} exists but its reserve {} was acknowledged as {:?}",
                        entry.token,
                        entry.answer
                    );
                    if let Some(other) = landed.reserves.insert(reserve, id.clone()) {
                        panic!(
                            "pending reserve {} took effect twice: {other} and {id}",
                            entry.token
                        );
                    }
                    assert!(
                        matches!(seen.state.as_str(), "held" | "expired"),
                        "{id} from a pending reserve is {}, but no command ended it",
                        seen.state
                    );
                }
            }
        }
    }
    (landed, read)
}

/// Step 2: retry every pending command; it replays exactly when it had taken effect.
async fn resolve(client: &Client, model: &mut Model, landed: &Landed) -> usize {
    let pending = model.pending();
    for &i in &pending {
        let (pool, action, token) = {
            let e = &model.entries[i];
            (e.pool.clone(), e.action.clone(), e.token.clone())
        };
        let mut attempts = 0;
        let answer = loop {
            attempts += 1;
            let answer = client
                .send(&pool, &action, &token)
                .await
                .unwrap_or_else(|e| panic!("retry of pending {token}: {e}"));
            if answer.status != 503 {
                break answer;
            }
            assert!(
                attempts < RESOLVE_ATTEMPTS_MAX,
                "pending {token} keeps answering 503: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            is_acknowledged(&answer),
            "retry of pending {token} {action:?}: {answer:?}"
        );
        let took_effect = outcome(&answer).is_some();
        match &action {
            Action::Reserve { .. } => match landed.reserves.get(&i) {
                Some(id) => {
                    assert!(
                        answer.replayed,
                        "{token} had created {id} before the crash, but its retry was not a \
                         replay: {answer:?}"
                    );
                    assert_eq!(answered_reservation(&answer).as_ref(), Some(id));
                }
                None if took_effect => assert!(
                    !answer.replayed,
                    "{token} replays a reservation the server did not show: {answer:?}"
                ),
                None => {}
            },
            _ => {
                let id = target(&model.entries[i]).expect("names a reservation");
                if landed.endings.contains(&id) {
                    // The snapshot showed this command's effect (it is the only one that
                    // could have ended the reservation).
                    assert!(
                        answer.replayed && took_effect,
                        "{token} had ended {id} before the crash, but its retry says {answer:?}"
                    );
                } else if took_effect {
                    assert!(
                        !answer.replayed,
                        "{token} replays an ending of {id} the server did not show: {answer:?}"
                    );
                }
            }
        }
        model.acknowledge(i, answer);
    }
    pending.len()
}

/// Step 3: the round's acknowledged commands and a sample of older ones replay as answered.
async fn replay(client: &Client, model: &Model, round: u32, rng: &mut Rng) -> usize {
    let mut picked: Vec<usize> = (0..model.entries.len())
        .filter(|&i| model.entries[i].round + 1 >= round)
        .collect();
    let older = picked.first().copied().unwrap_or(model.entries.len());
    for _ in 0..OLDER_REPLAYS_PER_ROUND.min(older) {
        picked.push(rng.below(older as u64) as usize);
    }
    for &i in &picked {
        let entry = &model.entries[i];
        let first = entry.answer.as_ref().expect("resolved before replay");
        let again = client
            .send(&entry.pool, &entry.action, &entry.token)
            .await
            .unwrap_or_else(|e| panic!("replay of {}: {e}", entry.token));
        assert_replays(&entry.token, first, &again);
    }
    picked.len()
}

/// Step 4: the pools' counters agree with the model.
async fn check_counters(reader: &Client, model: &Model) {
    for (name, _) in POOLS {
        let pool = PoolId::new(name);
        let body = pool_counters(reader, &pool).await;
        let ours = model.reservations.iter().filter(|(id, _)| id.pool == pool);
        let (mut reservations, mut confirmed, mut released) = (0, 0, 0);
        for (_, reservation) in ours {
            reservations += 1;
            match reservation.known {
                Known::Confirmed => confirmed += 1,
                Known::Released => released += 1,
                Known::Open => {}
            }
        }
        assert_eq!(
            counter(&body, "reservations"),
            reservations,
            "{pool}: {body}"
        );
        assert_eq!(counter(&body, "confirmed"), confirmed, "{pool}: {body}");
        assert_eq!(counter(&body, "released"), released, "{pool}: {body}");
        let expired = counter(&body, "expired");
        assert_eq!(
            counter(&body, "allocated"),
            reservations - released - expired,
            "{pool}: every reservation holds one unit until released or expired: {body}"
        );
        let capacity_rejections = body
            .get("rejections")
            .and_then(|r| r.get("pool-capacity-exceeded"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        assert_eq!(
            capacity_rejections,
            model.capacity_rejections.get(&pool).copied().unwrap_or(0),
            "{pool}: journaled capacity rejections: {body}"
        );
    }
}

/// Registers the load client's actor and declares the pools (first start only).
async fn set_up(server: &Server) -> (ActorId, SigningKey) {
    let admin = server.admin().expect("admin key");
    let (file, key) = KeyFile::generate("crash-loop", Role::Client);
    let actor = ActorId::new(file.actor);
    let answer = admin
        .register_actor(&actor, Role::Client, key.verifying_key().to_bytes(), "reg")
        .await
        .expect("register");
    assert!(answer.is_success(), "register: {answer:?}");
    for (name, capacity) in POOLS {
        let action = Action::DeclarePool {
            capacity,
            closes_at: None,
            units: Vec::new(),
            idempotency_window_ms: allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT,
        };
        let answer = admin
            .send(&PoolId::new(name), &action, &format!("declare-{name}"))
            .await
            .expect("declare");
        assert!(answer.is_success(), "declare {name}: {answer:?}");
    }
    (actor, key)
}

fn audit(allot: &Path, data: &Path) -> Option<bool> {
    if !allot_process::has_audit(allot) {
        return None;
    }
    let out = std::process::Command::new(allot)
        .arg("audit")
        .arg(data)
        .output()
        .expect("run allot audit");
    if !out.status.success() {
        eprintln!(
            "allot audit {} failed ({}):\n{}\n{}",
            data.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commands_survive_sigkill_and_replay() {
    let allot = locate_allot().unwrap_or_else(|e| panic!("{e}"));
    let kills: u32 = std::env::var("CRASH_KILLS")
        .ok()
        .map(|v| v.parse().expect("CRASH_KILLS is a number"))
        .unwrap_or(KILLS_DEFAULT);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("crash loop: {kills} kills, CRASH_SEED={seed}");
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let log = temp.path().join("allot.stderr.log");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut identity = None;
    let (mut pending_total, mut replayed_total, mut read_total) = (0, 0, 0);
    // Pending commands the restarted server showed done: durable, but killed before the answer.
    let mut landed_total = 0;

    for round in 0..=kills {
        let server = Server::start(&allot, &data, &log)
            .await
            .unwrap_or_else(|e| panic!("start {round}: {e} (CRASH_SEED={seed})"));
        let (actor, key) = match &identity {
            Some(identity) => identity,
            None => identity.insert(set_up(&server).await),
        }
        .clone();
        let client = Client::new(server.base.clone(), actor, key);
        // Reads are signed: the checks read as the admin, who may read any reservation.
        let reader = server.admin().expect("admin key");
        // No worker runs now: the checks own the model until the next load.
        let mut checked = std::mem::take(&mut *lock(&model));
        if round > 0 {
            let (landed, read) = snapshot(&reader, &checked, false).await;
            read_total += read;
            landed_total += landed.reserves.len() + landed.endings.len();
            pending_total += resolve(&client, &mut checked, &landed).await;
            replayed_total += replay(&client, &checked, round, &mut rng).await;
            check_counters(&reader, &checked).await;
            checked.touched.clear();
        }
        if round == kills {
            // The last start: every reservation read and compared, then stop for the audit.
            let (landed, read) = snapshot(&reader, &checked, true).await;
            assert!(landed.reserves.is_empty() && landed.endings.is_empty());
            read_total += read;
            *lock(&model) = checked;
            server.kill().expect("final kill");
            break;
        }
        *lock(&model) = checked;
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    client.clone(),
                    model.clone(),
                    stop.clone(),
                    round,
                    rng.next() ^ w as u64,
                ))
            })
            .collect();
        let load_ms = rng.between(LOAD_MS_MIN, LOAD_MS_MAX);
        // The random kill moment. Workers start nothing new after `stop`; what they have in
        // flight is cut by the kill right after.
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        stop.store(true, Ordering::SeqCst);
        server.kill().expect("kill");
        for handle in workers {
            if let Err(error) = handle.await {
                std::panic::resume_unwind(error.into_panic());
            }
        }
        let model = lock(&model);
        eprintln!(
            "round {round}: killed after {load_ms} ms; {} commands sent, {} pending",
            model.entries.len(),
            model.pending().len()
        );
    }

    let model = lock(&model);
    let audited = audit(&allot, &data);
    eprintln!(
        "crash loop done in {:.1} s: {kills} kills, {} commands acknowledged and checked \
         ({pending_total} were pending at a kill and resolved by retry, {landed_total} of them had \
         taken effect before it), {} reservations, \
         {replayed_total} replays checked, {read_total} reservation reads; lost 0, duplicated 0; \
         audit: {}",
        started.elapsed().as_secs_f64(),
        model.acknowledged,
        model.reservations.len(),
        match audited {
            None => "not in this binary",
            Some(true) => "passed",
            Some(false) => "FAILED",
        }
    );
    assert!(model.pending().is_empty());
    assert!(
        model.acknowledged > u64::from(kills),
        "the load did too little to test anything"
    );
    assert_ne!(
        audited,
        Some(false),
        "allot audit failed (CRASH_SEED={seed})"
    );
}
