//! `allot demo`: the add/drop rush of the course-registration seed, end to end over HTTP.
//!
//! A course section with 30 seats and a cutoff a few seconds away; 2,000 students race for it
//! with signed requests. Some confirm, some cancel, some let their hold lapse (the sweeper
//! returns the seat), some retry after a dropped response, and attempts go on past the cutoff.
//! At the end the demo checks, from the projections, that nothing was oversold and that every
//! pool's allocated count equals its live reservations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use allot_domain::{Action, ActorId, PoolId, Role, Timestamp};
use allot_projections::Projections;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

/// Requests the demo's students have in flight at once (file descriptors are finite).
const DEMO_IN_FLIGHT_MAX: usize = 256;

use allot_client::{Answer, Client};
use allot_server::clock::{Clock, SystemClock};
use allot_server::identity::KeyFile;
use allot_server::server::{FIRST_ADMIN, ServeOptions, Server, key_path};
use allot_server::store::EventStore;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub students: usize,
    pub seats: u64,
    pub cutoff_ms: u64,
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            students: 2_000,
            seats: 30,
            cutoff_ms: 4_000,
            seed: 2026,
        }
    }
}

/// The tally printed at the end.
#[derive(Debug, Default, Clone)]
pub struct DemoReport {
    pub seats: u64,
    pub attempts: u64,
    pub attempts_after_cutoff: u64,
    pub holds: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub expired_by_sweeper: u64,
    pub replayed: u64,
    pub rejections: BTreeMap<String, u64>,
    pub allocated: u64,
    pub live_reservations: u64,
    /// Confirmed seats beyond capacity: must be 0.
    pub oversold: u64,
    /// Pools whose allocated differs from the units of their live reservations: must be 0.
    pub incoherent_pools: u64,
    pub elapsed_ms: u64,
    /// Events the audit replayed, and the violations it found (must be 0).
    pub audit_events: u64,
    pub audit_violations: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Serve(#[from] allot_server::server::ServeError),
    #[error(transparent)]
    Client(#[from] allot_client::ClientError),
    #[error(transparent)]
    KeyFile(#[from] allot_server::identity::KeyFileError),
    #[error("demo setup failed: {0}")]
    Setup(String),
}

/// What one student does once they hold a seat.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Confirm,
    Cancel,
    Lapse,
}

#[derive(Default)]
struct Tally {
    attempts: u64,
    attempts_after_cutoff: u64,
    holds: u64,
    confirmed: u64,
    cancelled: u64,
    replayed: u64,
    rejections: BTreeMap<String, u64>,
}

impl Tally {
    fn rejected(&mut self, answer: &Answer) {
        let code = answer.code().unwrap_or("unknown").to_owned();
        *self.rejections.entry(code).or_default() += 1;
    }
}

/// Runs the demo over `store`, with keys in `keys_dir`.
pub async fn run(
    store: Arc<dyn EventStore>,
    keys_dir: &std::path::Path,
    options: DemoOptions,
) -> Result<DemoReport, DemoError> {
    let clock = SystemClock;
    let started = clock.now();
    let server = Server::start(
        Arc::clone(&store),
        Arc::new(SystemClock),
        Arc::new(Projections::new()),
        ServeOptions {
            listen: "127.0.0.1:0"
                .parse()
                .map_err(|e| DemoError::Setup(format!("{e}")))?,
            metrics_listen: "127.0.0.1:0"
                .parse()
                .map_err(|e| DemoError::Setup(format!("{e}")))?,
            keys_dir: keys_dir.to_owned(),
            server_key: None,
            sweeper: true,
            edge: Default::default(),
        },
    )
    .await?;
    let base = format!("http://{}", server.addr);
    let (admin_file, admin_key) = KeyFile::read(&key_path(keys_dir, FIRST_ADMIN))?;
    let admin = Client::new(base, ActorId::new(admin_file.actor), admin_key);

    // The registrar's front end is one client actor; its key is generated for this run.
    let mut rng = StdRng::seed_from_u64(options.seed);
    let registrar_key = SigningKey::from_bytes(&rng.r#gen::<[u8; 32]>());
    let registrar_id = ActorId::new(format!("registrar-{}", options.seed));
    let registered = admin
        .register_actor(
            &registrar_id,
            Role::Client,
            registrar_key.verifying_key().to_bytes(),
            &format!("register-{}-{}", registrar_id, started.0),
        )
        .await?;
    if !registered.is_success() {
        return Err(DemoError::Setup(format!(
            "register registrar: {}",
            registered.body
        )));
    }
    let registrar = admin.with_identity(registrar_id, registrar_key);

    let pool = PoolId::new(format!("CS101-{}", started.0));
    let cutoff = Timestamp(clock.now().0 + options.cutoff_ms);
    let declared = admin
        .send(
            &pool,
            &Action::DeclarePool {
                capacity: options.seats,
                closes_at: Some(cutoff),
                units: vec![],
                idempotency_window_ms: 3_600_000,
            },
            &format!("declare-{pool}"),
        )
        .await?;
    if !declared.is_success() {
        return Err(DemoError::Setup(format!("declare: {}", declared.body)));
    }
    allot_server::out!(
        "course {pool}: {} seats, add/drop cutoff in {:.1} s, {} students racing",
        options.seats,
        options.cutoff_ms as f64 / 1000.0,
        options.students
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(Semaphore::new(DEMO_IN_FLIGHT_MAX));
    let mut students = Vec::with_capacity(options.students);
    for student in 0..options.students {
        let registrar = registrar.clone();
        let pool = pool.clone();
        let tally = Arc::clone(&tally);
        let in_flight = Arc::clone(&in_flight);
        // Arrivals spread over the window and a little past the cutoff.
        let arrive_ms = rng.gen_range(0..options.cutoff_ms + options.cutoff_ms / 4);
        let plan = match rng.gen_range(0..10) {
            0..=4 => Plan::Confirm,
            5..=6 => Plan::Cancel,
            _ => Plan::Lapse,
        };
        let retry_same_token = rng.gen_bool(0.1);
        let hold_ms = rng.gen_range(1_000..2_500);
        let think_ms = rng.gen_range(0..1_500);
        students.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(arrive_ms)).await;
            student_run(
                &registrar,
                &pool,
                student,
                StudentPlan {
                    plan,
                    retry_same_token,
                    hold_ms,
                    think_ms,
                    cutoff,
                },
                &tally,
                &in_flight,
            )
            .await
        }));
    }
    for student in students {
        match student.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "student request failed"),
            Err(error) => tracing::warn!(%error, "student task failed"),
        }
    }

    // Let the sweeper return every lapsed hold: wait until nothing Held remains (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.service.projections().expiry.is_empty() && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let projections = server.service.projections();
    let count = projections.counts.get(&pool).unwrap_or_default();
    let (incoherent_pools, oversold) = coherence(projections);
    let tally = tally.lock().await;
    let report = DemoReport {
        seats: options.seats,
        attempts: tally.attempts,
        attempts_after_cutoff: tally.attempts_after_cutoff,
        holds: tally.holds,
        confirmed: count.confirmed,
        cancelled: tally.cancelled,
        expired_by_sweeper: count.expired,
        replayed: tally.replayed,
        rejections: tally.rejections.clone(),
        allocated: count.allocated,
        live_reservations: count.live(),
        oversold,
        incoherent_pools,
        elapsed_ms: clock.now().0.saturating_sub(started.0),
        audit_events: 0,
        audit_violations: 0,
    };
    drop(tally);
    server.shutdown().await?;
    // The auditor's view of the same log: every record-clearable check, signatures included.
    let bar = crate::inspect::progress_bar(None, "auditing");
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let findings = crate::inspect::audit(
        store.as_ref(),
        &crate::inspect::AuditRequest {
            verify_signatures: true,
            ..Default::default()
        },
        &bar,
    )
    .await
    .map_err(|e| DemoError::Setup(format!("audit: {e}")))?;
    Ok(DemoReport {
        audit_events: findings.report.events,
        audit_violations: findings.report.violations_total(),
        ..report
    })
}

/// Checks every pool: allocated equals the units of its live reservations, and confirmed units
/// never exceed capacity. Returns (incoherent pools, oversold units).
pub fn coherence(projections: &Projections) -> (u64, u64) {
    let mut live_units: BTreeMap<PoolId, u64> = BTreeMap::new();
    let mut confirmed_units: BTreeMap<PoolId, u64> = BTreeMap::new();
    projections.binding.for_each(|id, entry| {
        if entry.slot_held() {
            *live_units.entry(id.pool.clone()).or_default() += u64::from(entry.count);
        }
        if entry.state == allot_domain::ReservationState::Confirmed {
            *confirmed_units.entry(id.pool.clone()).or_default() += u64::from(entry.count);
        }
    });
    let mut incoherent = 0;
    let mut oversold = 0;
    for pool in projections.counts.pools() {
        let count = projections.counts.get(&pool).unwrap_or_default();
        if live_units.get(&pool).copied().unwrap_or(0) != count.allocated {
            incoherent += 1;
        }
        oversold += confirmed_units
            .get(&pool)
            .copied()
            .unwrap_or(0)
            .saturating_sub(count.capacity);
    }
    (incoherent, oversold)
}

struct StudentPlan {
    plan: Plan,
    retry_same_token: bool,
    hold_ms: u64,
    think_ms: u64,
    cutoff: Timestamp,
}

async fn student_run(
    registrar: &Client,
    pool: &PoolId,
    student: usize,
    plan: StudentPlan,
    tally: &Mutex<Tally>,
    in_flight: &Semaphore,
) -> Result<(), allot_client::ClientError> {
    let send = |action: Action, token: String| async move {
        // A closed semaphore never happens here (it is never closed); treat it as no limit.
        let _permit = in_flight.acquire().await.ok();
        registrar.send(pool, &action, &token).await
    };
    let reserve = Action::Reserve {
        resource: "seat".to_owned(),
        requester: format!("student-{student:04}"),
        duration_ms: plan.hold_ms,
        count: 1,
    };
    // A student who finds the course full refreshes and tries again a few times.
    for attempt in 0..4 {
        let token = format!("s{student}-reserve-{attempt}");
        let sent_at = SystemClock.now();
        let mut answer = send(reserve.clone(), token.clone()).await?;
        if plan.retry_same_token {
            // The response was "lost": the front end retries with the same key.
            answer = send(reserve.clone(), token).await?;
        }
        {
            let mut tally = tally.lock().await;
            tally.attempts += 1;
            tally.attempts_after_cutoff += u64::from(sent_at >= plan.cutoff);
            tally.replayed += u64::from(answer.replayed);
            if answer.is_success() {
                tally.holds += 1;
            } else {
                tally.rejected(&answer);
            }
        }
        if answer.is_success() {
            let Some(id) = answer.body.get("reservation_id").and_then(Value::as_str) else {
                return Ok(());
            };
            let Some(seq) = allot_domain::ReservationId::parse(id).map(|r| r.seq) else {
                return Ok(());
            };
            tokio::time::sleep(Duration::from_millis(plan.think_ms)).await;
            let (action, label) = match plan.plan {
                Plan::Confirm => (Action::ConfirmReservation { reservation: seq }, "confirm"),
                Plan::Cancel => (Action::CancelReservation { reservation: seq }, "cancel"),
                Plan::Lapse => return Ok(()),
            };
            let answer = send(action, format!("s{student}-{label}")).await?;
            let mut tally = tally.lock().await;
            if answer.is_success() {
                match plan.plan {
                    Plan::Confirm => tally.confirmed += 1,
                    Plan::Cancel => tally.cancelled += 1,
                    Plan::Lapse => {}
                }
            } else {
                tally.rejected(&answer);
            }
            return Ok(());
        }
        if answer.code() != Some("pool-capacity-exceeded") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200 + 150 * attempt)).await;
    }
    Ok(())
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "add/drop rush finished in {:.1} s",
            self.elapsed_ms as f64 / 1000.0
        )?;
        writeln!(f, "  seats                    {}", self.seats)?;
        writeln!(
            f,
            "  reserve attempts         {} ({} after the cutoff)",
            self.attempts, self.attempts_after_cutoff
        )?;
        writeln!(f, "  holds granted            {}", self.holds)?;
        writeln!(f, "  confirmed                {}", self.confirmed)?;
        writeln!(f, "  cancelled                {}", self.cancelled)?;
        writeln!(f, "  expired by the sweeper   {}", self.expired_by_sweeper)?;
        writeln!(f, "  retries replayed         {}", self.replayed)?;
        writeln!(f, "  rejections by code:")?;
        for (code, count) in &self.rejections {
            writeln!(f, "    {code:<26} {count}")?;
        }
        writeln!(
            f,
            "  allocated {} = live reservations {}",
            self.allocated, self.live_reservations
        )?;
        writeln!(f, "  pools out of coherence   {}", self.incoherent_pools)?;
        writeln!(f, "  oversold seats           {}", self.oversold)?;
        write!(
            f,
            "  audit of the log         {} events, {} violations",
            self.audit_events, self.audit_violations
        )
    }
}
