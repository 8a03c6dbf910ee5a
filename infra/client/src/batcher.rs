//! Auto-batching submission: [`Batcher::submit`] takes one pool command at a time, and concurrent
//! submissions travel together as signed batches (`POST /v1/batches`), each answered member by
//! member. `docs/client.md` describes the defaults, retries, backpressure and errors.
//!
//! The path of a command:
//! 1. `submit` waits for room ([`BatcherConfig::max_pending`] commands queued or in flight),
//!    gives the command its idempotency token and queues it;
//! 2. one collector task takes queued commands into a batch until it holds
//!    [`BatcherConfig::max_batch`] or [`BatcherConfig::linger`] has passed since its first, and a
//!    connection is free (while none is, the batch keeps filling up to `max_batch`);
//! 3. a task per batch signs it (a fresh key per batch), sends it on a keep-alive connection and
//!    hands each member its answer; it resends what got no answer (same key, same members and
//!    tokens, signed with the members' first signing time, so what was decided is replayed, not
//!    decided again, and no resend lands after the server's signature skew).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allot_domain::{Action, ActorId, IdempotencyToken, PoolId, ReservationId, Timestamp};
use ed25519_dalek::SigningKey;
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::http1::{Connections, Endpoint};
use crate::receipt::Receipt;
use crate::wire::{self, BatchCommand};

/// How long the first command of a batch waits for others to join it.
pub const LINGER_DEFAULT: Duration = Duration::from_millis(1);
/// Most commands in one batch. The server decodes, decides and answers one batch in one task,
/// so several smaller batches in flight use its cores better than one large one: at 1,024
/// closed-loop callers on 2 cores, 128 × 16 ran about 1.5 times the commands of 1,024 × 4.
pub const MAX_BATCH_DEFAULT: usize = 128;
/// Batches in flight at once, each on its own keep-alive connection.
pub const CONNECTIONS_DEFAULT: usize = 16;
/// Commands queued or in flight before `submit` waits for room.
pub const MAX_PENDING_DEFAULT: usize = 16_384;
/// Sends of one batch before its commands are given up as unanswered.
pub const ATTEMPTS_DEFAULT: u32 = 10;
/// The wait before the first resend; it doubles per attempt up to [`BACKOFF_MAX_DEFAULT`].
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(1);
/// One exchange (connecting included) without an answer counts as a failed attempt.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// The largest batch body the server reads (`docs/http.md`); a larger batch is sent in halves.
pub const BATCH_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How a [`Batcher`] batches, sends and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Most commands in one batch, 1..=[`allot_domain::batch::BATCH_COMMANDS_MAX`].
    pub max_batch: usize,
    /// How long the first command of a batch waits for others before the batch is sent.
    pub linger: Duration,
    /// Batches in flight at once (keep-alive connections).
    pub connections: usize,
    /// Commands queued or in flight; `submit` waits for room beyond it.
    pub max_pending: usize,
    /// Sends of one batch (the first included) before its commands are given up.
    pub attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The limit on one exchange, connecting included.
    pub timeout: Duration,
    /// Ask for each recorded command's receipt (`POST /v1/batches?receipts=true`). Off by
    /// default: a receipt holds its event whole and is several times the size of the outcome.
    pub receipts: bool,
}

impl Default for BatcherConfig {
    fn default() -> BatcherConfig {
        BatcherConfig {
            max_batch: MAX_BATCH_DEFAULT,
            linger: LINGER_DEFAULT,
            connections: CONNECTIONS_DEFAULT,
            max_pending: MAX_PENDING_DEFAULT,
            attempts: ATTEMPTS_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            timeout: TIMEOUT_DEFAULT,
            receipts: false,
        }
    }
}

/// Why a [`Batcher`] cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BatcherError {
    #[error("server {0:?} is not a plain http:// URL with a host")]
    Server(String),
    #[error("invalid batcher configuration: {0}")]
    Config(&'static str),
    #[error("a batcher runs its tasks on a tokio runtime; none is running here")]
    NoRuntime,
}

/// Why a submitted command has no outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The server refused the command's batch as a whole at its first send (e.g. 401: the
    /// signature or the actor), or refused this command sent alone as unreadable: nothing was
    /// decided.
    #[error("refused ({status} {code}): {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// No answer after every attempt, a refusal of a resend, or an answer that could not be
    /// read: the command may or may not have been decided. Submitting it again with the same
    /// token ([`Batcher::submit_with_token`]) within the pool's idempotency window is safe.
    #[error("no answer after {attempts} attempts (last: {last}); resubmit with token {token}")]
    Unanswered {
        token: IdempotencyToken,
        attempts: u32,
        last: String,
    },
    /// The batch could not be encoded.
    #[error("cannot encode the batch: {0}")]
    Encoding(String),
    /// The batcher's tasks stopped (the runtime is shutting down).
    #[error("the batcher stopped before the command was answered")]
    Stopped,
}

/// What the server decided for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    PoolDeclared {
        pool: PoolId,
    },
    CapacityAdjusted {
        capacity: u64,
    },
    PoolClosed {
        pool: PoolId,
    },
    Reserved {
        reservation: ReservationId,
        expires_at: Timestamp,
    },
    Confirmed {
        reservation: ReservationId,
    },
    /// A cancel released the reservation.
    Released {
        reservation: ReservationId,
    },
    Expired {
        reservation: ReservationId,
    },
    /// Refused: a domain rejection (`pool-capacity-exceeded`, `not-held`, ...) or a check of
    /// the command alone (`invalid-request`, `forbidden`), with the single route's status.
    Rejected {
        status: u16,
        code: String,
        detail: String,
    },
}

impl Outcome {
    /// The status the single-command route answers with.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::PoolDeclared { .. } | Outcome::Reserved { .. } => 201,
            Outcome::Rejected { status, .. } => *status,
            _ => 200,
        }
    }

    pub fn is_rejected(&self) -> bool {
        matches!(self, Outcome::Rejected { .. })
    }
}

/// A command's answer.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub outcome: Outcome,
    /// The outcome was recorded earlier for this token and is replayed, not decided again.
    pub replayed: bool,
    pub token: IdempotencyToken,
    /// The receipt of the event this answer recorded (on the embedded store), as sent.
    pub receipt: Option<Box<RawValue>>,
}

impl Submitted {
    /// The receipt, parsed; `Err` if it is there but malformed.
    pub fn receipt(&self) -> Option<Result<Receipt, serde_json::Error>> {
        self.receipt
            .as_deref()
            .map(|raw| serde_json::from_str(raw.get()))
    }

    /// The answer as the single-command route's JSON body, plus `status`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let mut body = match &self.outcome {
            Outcome::PoolDeclared { pool } => json!({"outcome": "pool_declared", "pool_id": pool}),
            Outcome::CapacityAdjusted { capacity } => {
                json!({"outcome": "capacity_adjusted", "capacity": capacity})
            }
            Outcome::PoolClosed { pool } => json!({"outcome": "pool_closed", "pool_id": pool}),
            Outcome::Reserved {
                reservation,
                expires_at,
            } => json!({"outcome": "reserved", "reservation_id": reservation.to_string(),
                         "pool_id": reservation.pool, "expires_at": expires_at}),
            Outcome::Confirmed { reservation } => {
                json!({"outcome": "confirmed", "reservation_id": reservation.to_string()})
            }
            Outcome::Released { reservation } => {
                json!({"outcome": "released", "reservation_id": reservation.to_string()})
            }
            Outcome::Expired { reservation } => {
                json!({"outcome": "expired", "reservation_id": reservation.to_string()})
            }
            Outcome::Rejected { code, detail, .. } => json!({"code": code, "detail": detail}),
        };
        if let Some(members) = body.as_object_mut() {
            members.insert("status".into(), self.outcome.status().into());
            if self.replayed {
                members.insert("replayed".into(), true.into());
            }
            if let Some(receipt) = self
                .receipt
                .as_deref()
                .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
            {
                members.insert("receipt".into(), receipt);
            }
        }
        body
    }
}

/// What a batcher has sent so far, from the client's side.
#[derive(Debug, Clone, Default)]
pub struct BatcherStats {
    /// Requests sent (resends included).
    pub requests: u64,
    /// Commands in those requests.
    pub commands: u64,
    /// Requests that were resends of a batch that got no answer.
    pub resent_batches: u64,
    /// Commands resent because their member answer was a 503.
    pub resent_members: u64,
    /// `sizes[n]`: requests that carried `n` commands.
    pub sizes: Vec<u64>,
}

impl BatcherStats {
    pub fn mean_batch(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.commands as f64 / self.requests as f64
        }
    }

    /// The batch size of the median request.
    pub fn median_batch(&self) -> u64 {
        let half = self.requests.div_ceil(2);
        let mut seen = 0;
        for (size, count) in self.sizes.iter().enumerate() {
            seen += count;
            if seen >= half && *count > 0 {
                return size as u64;
            }
        }
        0
    }
}

struct Stats {
    requests: AtomicU64,
    commands: AtomicU64,
    resent_batches: AtomicU64,
    resent_members: AtomicU64,
    sizes: Box<[AtomicU64]>,
}

impl Stats {
    fn new(max_batch: usize) -> Stats {
        Stats {
            requests: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            resent_batches: AtomicU64::new(0),
            resent_members: AtomicU64::new(0),
            sizes: (0..=max_batch).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn sent(&self, size: usize, resend: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(size as u64, Ordering::Relaxed);
        if resend {
            self.resent_batches.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(count) = self.sizes.get(size) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> BatcherStats {
        BatcherStats {
            requests: self.requests.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            resent_batches: self.resent_batches.load(Ordering::Relaxed),
            resent_members: self.resent_members.load(Ordering::Relaxed),
            sizes: self
                .sizes
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Idempotency tokens unique to this batcher: a random prefix and a counter.
struct Tokens {
    prefix: String,
    next: AtomicU64,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens {
            prefix: hex::encode(rand::random::<[u8; 8]>()),
            next: AtomicU64::new(1),
        }
    }

    fn command(&self) -> IdempotencyToken {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        IdempotencyToken::new(format!("{}-{n}", self.prefix))
    }

    /// A batch's key: apart from command tokens (`b`), though the two never meet on the server.
    fn batch(&self) -> IdempotencyToken {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        IdempotencyToken::new(format!("{}-b{n}", self.prefix))
    }
}

type Reply = oneshot::Sender<Result<Submitted, SubmitError>>;

/// A queued command and the caller waiting on it; its room is given back when it is answered.
struct Pending {
    command: BatchCommand,
    reply: Reply,
    _room: OwnedSemaphorePermit,
}

/// The callers of a batch's members, in the members' order.
struct Waiter {
    reply: Reply,
    _room: OwnedSemaphorePermit,
}

/// One batch as it is sent: its key, members and callers, and how often it was sent.
struct Job {
    key: IdempotencyToken,
    commands: Vec<BatchCommand>,
    waiters: Vec<Waiter>,
    /// Sends counted against [`BatcherConfig::attempts`] (a member resend carries its batch's).
    attempts: u32,
    /// Sends of this very batch (key and members).
    sends: u32,
    /// What the last attempt failed with.
    last: String,
    /// Not to be sent before then (a member resend after a 503).
    not_before: Option<Instant>,
    /// When its members were first signed: every send of them is signed with this time, so the
    /// server's signature skew bounds how late a resend can land (a resend past it is refused,
    /// never decided after the pool may have forgotten a token).
    signed_at: Option<Timestamp>,
    /// Its members went out before, in this batch or the one they came from: they may have
    /// been decided, whatever a later refusal says.
    sent_before: bool,
}

impl Job {
    fn new(key: IdempotencyToken, capacity: usize) -> Job {
        Job {
            key,
            commands: Vec::with_capacity(capacity),
            waiters: Vec::with_capacity(capacity),
            attempts: 0,
            sends: 0,
            last: String::new(),
            not_before: None,
            signed_at: None,
            sent_before: false,
        }
    }

    /// An empty job for members of `self` sent again under key `key`.
    fn follow_up(&self, key: IdempotencyToken, capacity: usize) -> Job {
        Job {
            attempts: self.attempts,
            signed_at: self.signed_at,
            sent_before: self.sent_before || self.sends > 0,
            ..Job::new(key, capacity)
        }
    }

    fn push(&mut self, command: BatchCommand, waiter: Waiter) {
        self.commands.push(command);
        self.waiters.push(waiter);
    }

    /// Answers every member with `error`.
    fn fail(self, error: &SubmitError) {
        for waiter in self.waiters {
            let _ = waiter.reply.send(Err(error.clone()));
        }
    }

    /// Answers every member as unanswered, each with its own token.
    fn give_up(self) {
        for (command, waiter) in self.commands.into_iter().zip(self.waiters) {
            let _ = waiter.reply.send(Err(SubmitError::Unanswered {
                token: command.token,
                attempts: self.attempts,
                last: self.last.clone(),
            }));
        }
    }
}

/// What the server answered to one send of a batch.
enum Answered {
    /// 200: one result per member.
    Results(Bytes),
    /// The whole batch was refused.
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
}

/// A status that says nothing was done and the same request may succeed later.
fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 502 | 503 | 504)
}

/// A whole-batch refusal that may be one member's fault: the batch is split to find it.
fn splittable(status: u16) -> bool {
    matches!(status, 400 | 413)
}

/// One member's result as the server writes it: the single route's body, `status`, `replayed`.
#[derive(Deserialize)]
struct MemberAnswer<'a> {
    status: u16,
    #[serde(default)]
    replayed: bool,
    #[serde(default, borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    detail: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reservation_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pool_id: Option<Cow<'a, str>>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    capacity: Option<u64>,
    #[serde(default)]
    receipt: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    results: Vec<MemberAnswer<'a>>,
}

/// The members of a problem document this client reads.
#[derive(Deserialize)]
struct ProblemAnswer {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

impl MemberAnswer<'_> {
    fn outcome(&self) -> Result<Outcome, String> {
        let reservation = || {
            self.reservation_id
                .as_deref()
                .and_then(ReservationId::parse)
                .ok_or_else(|| "a result without a readable reservation_id".to_owned())
        };
        let pool = || {
            self.pool_id
                .as_deref()
                .map(PoolId::new)
                .ok_or_else(|| "a result without pool_id".to_owned())
        };
        let Some(outcome) = self.outcome.as_deref() else {
            return match &self.code {
                Some(code) => Ok(Outcome::Rejected {
                    status: self.status,
                    code: code.clone().into_owned(),
                    detail: self.detail.clone().unwrap_or_default().into_owned(),
                }),
                None => Err("a result with neither outcome nor code".to_owned()),
            };
        };
        Ok(match outcome {
            "reserved" => Outcome::Reserved {
                reservation: reservation()?,
                expires_at: Timestamp(self.expires_at.ok_or("a reserve without expires_at")?),
            },
            "confirmed" => Outcome::Confirmed {
                reservation: reservation()?,
            },
            "released" => Outcome::Released {
                reservation: reservation()?,
            },
            "expired" => Outcome::Expired {
                reservation: reservation()?,
            },
            "pool_declared" => Outcome::PoolDeclared { pool: pool()? },
            "pool_closed" => Outcome::PoolClosed { pool: pool()? },
            "capacity_adjusted" => Outcome::CapacityAdjusted {
                capacity: self.capacity.ok_or("capacity_adjusted without capacity")?,
            },
            "rejected" => Outcome::Rejected {
                status: self.status,
                code: self.code.clone().unwrap_or_default().into_owned(),
                detail: self.detail.clone().unwrap_or_default().into_owned(),
            },
            other => return Err(format!("unknown outcome {other:?}")),
        })
    }
}

struct Shared {
    actor: ActorId,
    key: SigningKey,
    actor_header: HeaderValue,
    target: hyper::Uri,
    connections: Connections,
    config: BatcherConfig,
    tokens: Tokens,
    stats: Stats,
}

/// Submits pool commands as one actor, batching concurrent ones. Cheap to clone (clones share
/// the queue, connections and tokens); the collector stops once every clone is dropped and what
/// was queued has been sent.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Pending>,
    room: Arc<Semaphore>,
}

impl Batcher {
    /// A batcher sending to `base` (`http://host:port`) as `actor`, signing with `key`. Must be
    /// called on a tokio runtime: it starts the collector task there.
    pub fn new(
        base: &str,
        actor: ActorId,
        key: SigningKey,
        config: BatcherConfig,
    ) -> Result<Batcher, BatcherError> {
        let endpoint = Endpoint::parse(base).ok_or_else(|| BatcherError::Server(base.into()))?;
        check(&config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BatcherError::NoRuntime)?;
        let actor_header = HeaderValue::from_str(actor.as_str())
            .map_err(|_| BatcherError::Config("the actor id is not a header value"))?;
        let path = if config.receipts {
            wire::BATCH_RECEIPTS_PATH
        } else {
            wire::BATCH_PATH
        };
        let target = endpoint
            .target(path)
            .ok_or_else(|| BatcherError::Server(base.into()))?;
        let shared = Arc::new(Shared {
            actor,
            key,
            actor_header,
            target,
            connections: Connections::new(endpoint),
            stats: Stats::new(config.max_batch),
            tokens: Tokens::new(),
            config,
        });
        let (queue, queued) = mpsc::unbounded_channel();
        let connections = Arc::new(Semaphore::new(shared.config.connections));
        runtime.spawn(collect(Arc::clone(&shared), queued, connections));
        Ok(Batcher {
            room: Arc::new(Semaphore::new(shared.config.max_pending)),
            shared,
            queue,
        })
    }

    pub fn actor(&self) -> &ActorId {
        &self.shared.actor
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.shared.config
    }

    /// Submits `action` on `pool` with a fresh token; waits for room first, then for the outcome.
    pub async fn submit(&self, pool: PoolId, action: Action) -> Result<Submitted, SubmitError> {
        let token = self.shared.tokens.command();
        self.submit_with_token(pool, action, token).await
    }

    /// As [`Batcher::submit`] with the caller's `token`: submitting a command again with the
    /// token it had (after [`SubmitError::Unanswered`], or from another process) replays its
    /// outcome if it was decided.
    pub async fn submit_with_token(
        &self,
        pool: PoolId,
        action: Action,
        token: IdempotencyToken,
    ) -> Result<Submitted, SubmitError> {
        let room = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| SubmitError::Stopped)?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            command: BatchCommand {
                pool,
                action,
                token,
            },
            reply,
            _room: room,
        };
        self.queue.send(pending).map_err(|_| SubmitError::Stopped)?;
        answer.await.unwrap_or(Err(SubmitError::Stopped))
    }

    pub fn stats(&self) -> BatcherStats {
        self.shared.stats.snapshot()
    }
}

fn check(config: &BatcherConfig) -> Result<(), BatcherError> {
    if !(1..=allot_domain::batch::BATCH_COMMANDS_MAX).contains(&config.max_batch) {
        return Err(BatcherError::Config(
            "max_batch must be 1..=8192 (the server's limit)",
        ));
    }
    if config.connections == 0 || config.connections > Semaphore::MAX_PERMITS {
        return Err(BatcherError::Config("connections must be at least 1"));
    }
    if config.max_pending == 0 || config.max_pending > Semaphore::MAX_PERMITS {
        return Err(BatcherError::Config("max_pending must be at least 1"));
    }
    if config.attempts == 0 {
        return Err(BatcherError::Config("attempts must be at least 1"));
    }
    Ok(())
}

/// The collector: forms batches from the queue and starts one task per batch once a connection
/// is free. Ends when every [`Batcher`] is dropped and the queue is empty.
async fn collect(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    connections: Arc<Semaphore>,
) {
    let max = shared.config.max_batch;
    let mut batch: Vec<Pending> = Vec::with_capacity(max);
    loop {
        if queue.recv_many(&mut batch, max).await == 0 {
            return;
        }
        let mut open = true;
        let linger = tokio::time::sleep(shared.config.linger);
        tokio::pin!(linger);
        while open && batch.len() < max {
            let room = max - batch.len();
            tokio::select! {
                biased;
                () = &mut linger => break,
                received = queue.recv_many(&mut batch, room) => open = received > 0,
            }
        }
        // Every connection busy: the batch keeps filling while it waits for one.
        let free = Arc::clone(&connections).acquire_owned();
        tokio::pin!(free);
        let connection = loop {
            if !open || batch.len() >= max {
                break (&mut free).await;
            }
            let room = max - batch.len();
            tokio::select! {
                biased;
                connection = &mut free => break connection,
                received = queue.recv_many(&mut batch, room) => open = received > 0,
            }
        };
        let Ok(connection) = connection else {
            // The semaphore is never closed; were it, nothing could be sent.
            return;
        };
        let mut job = Job::new(shared.tokens.batch(), batch.len());
        for pending in batch.drain(..) {
            job.push(
                pending.command,
                Waiter {
                    reply: pending.reply,
                    _room: pending._room,
                },
            );
        }
        tokio::spawn(Arc::clone(&shared).run(job, connection));
    }
}

impl Shared {
    /// Sends `first` and whatever it leads to (halves, member resends) on one connection slot.
    async fn run(self: Arc<Self>, first: Job, _connection: OwnedSemaphorePermit) {
        let mut jobs = vec![first];
        while let Some(job) = jobs.pop() {
            self.attempt(job, &mut jobs).await;
        }
    }

    /// Sends `job` until it is answered or out of attempts; follow-up jobs go to `jobs`.
    async fn attempt(&self, mut job: Job, jobs: &mut Vec<Job>) {
        if let Some(at) = job.not_before.take() {
            tokio::time::sleep_until(at).await;
        }
        loop {
            let body = match encode(&job.commands) {
                Ok(body) => body,
                Err(error) => return job.fail(&error),
            };
            if body.len() > BATCH_BODY_BYTES_MAX && job.commands.len() > 1 {
                return self.split(job, jobs);
            }
            let resend = job.sends > 0;
            job.sends += 1;
            job.attempts += 1;
            let signed_at = *job.signed_at.get_or_insert_with(now);
            match self.send(&job, body, resend, signed_at).await {
                Ok(Answered::Results(body)) => return self.settle(job, &body, jobs),
                Ok(Answered::Refused { status, .. })
                    if splittable(status) && job.commands.len() > 1 =>
                {
                    return self.split(job, jobs);
                }
                Ok(Answered::Refused {
                    status,
                    code,
                    detail,
                }) => {
                    let refusal = format!("{status} {code}: {detail}");
                    if !transient(status) {
                        // A refusal proves nothing was decided only for members never sent
                        // before, or for one member the server cannot read at all.
                        let undecided = !(job.sent_before || job.sends > 1)
                            || (splittable(status) && job.commands.len() == 1);
                        if !undecided {
                            job.last = refusal;
                            return job.give_up();
                        }
                        return job.fail(&SubmitError::Refused {
                            status,
                            code,
                            detail,
                        });
                    }
                    job.last = refusal;
                }
                Err(error) => job.last = error,
            }
            if job.attempts >= self.config.attempts {
                return job.give_up();
            }
            tokio::time::sleep(self.backoff(job.attempts)).await;
        }
    }

    /// Splits `job` in two batches with keys of their own (different members, different batch).
    fn split(&self, mut job: Job, jobs: &mut Vec<Job>) {
        let half = job.commands.len() / 2;
        let mut second = job.follow_up(self.tokens.batch(), job.commands.len() - half);
        second.commands = job.commands.split_off(half);
        second.waiters = job.waiters.split_off(half);
        let mut first = job.follow_up(self.tokens.batch(), half);
        first.commands = job.commands;
        first.waiters = job.waiters;
        // The first half is sent first: members of one pool keep their order.
        jobs.push(second);
        jobs.push(first);
    }

    /// Hands each member its result; members answered 503 go into a resend, after a backoff.
    fn settle(&self, mut job: Job, body: &[u8], jobs: &mut Vec<Job>) {
        // An answer that cannot be read followed a batch the server took: its members may have
        // been decided, so each is unanswered, with its token.
        let answer = match serde_json::from_slice::<BatchAnswer<'_>>(body) {
            Ok(answer) if answer.results.len() == job.commands.len() => answer,
            Ok(answer) => {
                job.last = format!(
                    "unreadable answer: {} results for {} commands",
                    answer.results.len(),
                    job.commands.len()
                );
                return job.give_up();
            }
            Err(error) => {
                job.last = format!("unreadable answer: {error}");
                return job.give_up();
            }
        };
        let mut again = job.follow_up(self.tokens.batch(), 0);
        for ((command, waiter), result) in job
            .commands
            .into_iter()
            .zip(job.waiters)
            .zip(answer.results)
        {
            if result.status == 503 {
                again.last = format!(
                    "503 {}: {}",
                    result.code.as_deref().unwrap_or_default(),
                    result.detail.as_deref().unwrap_or_default()
                );
                again.push(command, waiter);
                continue;
            }
            let answer = match result.outcome() {
                Ok(outcome) => Ok(Submitted {
                    outcome,
                    replayed: result.replayed,
                    token: command.token,
                    receipt: result.receipt,
                }),
                Err(error) => Err(SubmitError::Unanswered {
                    token: command.token,
                    attempts: job.attempts,
                    last: format!("unreadable result: {error}"),
                }),
            };
            let _ = waiter.reply.send(answer);
        }
        if again.commands.is_empty() {
            return;
        }
        if again.attempts >= self.config.attempts {
            return again.give_up();
        }
        self.stats
            .resent_members
            .fetch_add(again.commands.len() as u64, Ordering::Relaxed);
        again.not_before = Some(Instant::now() + self.backoff(again.attempts));
        jobs.push(again);
    }

    /// Signs `job` at `signed_at` and sends it with `body`: `Err` (with why) if no answer came.
    async fn send(
        &self,
        job: &Job,
        body: Vec<u8>,
        resend: bool,
        signed_at: Timestamp,
    ) -> Result<Answered, String> {
        let attestation =
            wire::sign_batch(&self.key, &self.actor, &job.key, &job.commands, signed_at)
                .ok_or_else(|| "an empty batch".to_owned())?;
        let mut headers = HeaderMap::with_capacity(8);
        let header = |text: &str| HeaderValue::from_str(text).map_err(|e| e.to_string());
        headers.insert(
            HeaderName::from_static(wire::IDEMPOTENCY_KEY),
            header(job.key.as_str())?,
        );
        headers.insert(
            HeaderName::from_static(wire::ACTOR_HEADER),
            self.actor_header.clone(),
        );
        headers.insert(
            HeaderName::from_static(wire::SIGNED_AT_HEADER),
            HeaderValue::from(signed_at.0),
        );
        headers.insert(
            HeaderName::from_static(wire::SIGNATURE_HEADER),
            header(&hex::encode(&attestation.signature))?,
        );
        self.stats.sent(job.commands.len(), resend);
        let response = self
            .connections
            .post(
                self.target.clone(),
                headers,
                Bytes::from(body),
                self.config.timeout,
            )
            .await
            .map_err(|error| error.to_string())?;
        if response.status == 200 {
            return Ok(Answered::Results(response.body));
        }
        let problem = serde_json::from_slice::<ProblemAnswer>(&response.body).ok();
        let (code, detail) = match problem {
            Some(problem) => (
                problem.code.unwrap_or_default(),
                problem.detail.unwrap_or_default(),
            ),
            None => (
                String::new(),
                String::from_utf8_lossy(&response.body).into_owned(),
            ),
        };
        Ok(Answered::Refused {
            status: response.status,
            code,
            detail,
        })
    }

    /// The wait after `attempts` sends: doubling from the initial wait, capped, with jitter
    /// (half to all of it) so that batches failed together are not resent together.
    fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self
            .config
            .backoff_initial
            .saturating_mul(1 << attempts.saturating_sub(1).min(16));
        let capped = doubled.min(self.config.backoff_max);
        capped.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..=1.0))
    }
}

/// The JSON body of a batch.
fn encode(commands: &[BatchCommand]) -> Result<Vec<u8>, SubmitError> {
    let mut body = Vec::with_capacity(64 + commands.len() * 160);
    wire::write_batch_body(commands, &mut body)
        .map_err(|error| SubmitError::Encoding(error.to_string()))?;
    Ok(body)
}

/// The wall clock, in milliseconds since the epoch: when a batch is signed.
fn now() -> Timestamp {
    crate::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_results_read_as_outcomes() {
        let body = br#"{"results":[
            {"status":201,"outcome":"reserved","reservation_id":"hall:1","pool_id":"hall","expires_at":7,"receipt":{"format":1}},
            {"status":200,"replayed":true,"outcome":"released","reservation_id":"hall:2"},
            {"type":"urn:allot:problem:pool-capacity-exceeded","title":"Conflict","status":409,"detail":"full","code":"pool-capacity-exceeded"},
            {"status":200,"outcome":"capacity_adjusted","capacity":5}
        ]}"#;
        let answer: BatchAnswer<'_> = serde_json::from_slice(body).expect("parses");
        let outcomes: Vec<_> = answer
            .results
            .iter()
            .map(|result| result.outcome().expect("readable"))
            .collect();
        let reservation = |seq| ReservationId {
            pool: PoolId::new("hall"),
            seq,
        };
        assert_eq!(
            outcomes,
            [
                Outcome::Reserved {
                    reservation: reservation(1),
                    expires_at: Timestamp(7)
                },
                Outcome::Released {
                    reservation: reservation(2)
                },
                Outcome::Rejected {
                    status: 409,
                    code: "pool-capacity-exceeded".into(),
                    detail: "full".into()
                },
                Outcome::CapacityAdjusted { capacity: 5 },
            ]
        );
        assert!(answer.results[1].replayed);
        assert!(answer.results[0].receipt.is_some());
        assert_eq!(outcomes[0].status(), 201);
    }

    #[test]
    fn batch_sizes_have_a_mean_and_a_median() {
        let mut stats = BatcherStats {
            requests: 3,
            commands: 12,
            sizes: vec![0; 9],
            ..BatcherStats::default()
        };
        stats.sizes[2] = 1;
        stats.sizes[3] = 1;
        stats.sizes[7] = 1;
        assert_eq!(stats.mean_batch(), 4.0);
        assert_eq!(stats.median_batch(), 3);
        assert_eq!(BatcherStats::default().median_batch(), 0);
    }

    #[test]
    fn configurations_out_of_range_are_refused() {
        assert!(check(&BatcherConfig::default()).is_ok());
        for config in [
            BatcherConfig {
                max_batch: 0,
                ..BatcherConfig::default()
            },
            BatcherConfig {
                max_batch: 8193,
                ..BatcherConfig::default()
            },
            BatcherConfig {
                connections: 0,
                ..BatcherConfig::default()
            },
            BatcherConfig {
                attempts: 0,
                ..BatcherConfig::default()
            },
        ] {
            assert!(check(&config).is_err(), "{config:?}");
        }
    }
}
