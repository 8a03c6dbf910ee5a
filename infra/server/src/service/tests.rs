//! The command path against a store that holds, fails, loses and conflicts appends on cue.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use allot_domain::{Action, ActorId, Attestation, IdempotencyToken, Timestamp};
use async_trait::async_trait;

use super::*;
use crate::clock::ManualClock;
use crate::service::replay_tail::decode_pool;
use crate::store::memory::MemoryStore;
use crate::store::{
    AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError,
    Subscription,
};
use allot_domain::signing::params_digest;
use allot_domain::streams::pool_stream;

/// How the held append ends once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Nothing written; `Unavailable { maybe_written: false }`.
    NotWritten,
    /// Written, acknowledgement lost; `Unavailable { maybe_written: true }`.
    AckLost,
    /// Nothing written; refused as if another writer had moved the stream.
    Conflict,
    /// The append panics (a bug in a store, or in the task polling it).
    Panic,
}

struct Hold {
    fate: Fate,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// An append the store has been handed and not yet answered: the versions its events would
/// take (`None` for `ExpectedVersion::Any`).
struct Flight {
    id: usize,
    stream: String,
    base: Option<u64>,
    next: Option<u64>,
}

/// The memory store, except that the next append after [`GatedStore::hold_next`] waits for
/// a release and then ends as its [`Fate`] says; while the gate is closed
/// ([`GatedStore::close_gate`]) every other append waits, in submission order, until
/// [`GatedStore::open_gate`] and is then written as usual. Other calls pass straight
/// through (a wave's appends run concurrently, the default `append_wave`).
///
/// It also watches the appends in flight: per stream, how many at once at most, and whether
/// an append arrived that does not continue the one in flight before it (two writers of one
/// stream at once, as two tasks of one pool would be).
struct GatedStore {
    inner: MemoryStore,
    hold: StdMutex<Option<Hold>>,
    appends: std::sync::atomic::AtomicUsize,
    line: StdMutex<Line>,
    flights: StdMutex<Vec<Flight>>,
    max_in_flight: StdMutex<std::collections::HashMap<String, usize>>,
    overlaps: StdMutex<Vec<String>>,
    /// Woken whenever the appends in flight change.
    changed: Notify,
}

/// The queue of appends (other than a [`GatedStore::hold_next`] one): each takes a ticket on
/// arrival and is written only once every earlier ticket was (so in arrival order, however
/// they are polled), and while the gate is closed only if it arrived before it closed.
#[derive(Default)]
struct Line {
    next: u64,
    /// Tickets below this may pass; `None` while the gate is open.
    released: Option<u64>,
    /// Every ticket below this is done.
    frontier: u64,
    done: std::collections::BTreeSet<u64>,
}

/// A place in the [`Line`]; done when written, or dropped unwritten.
struct Ticket<'a> {
    store: &'a GatedStore,
    number: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut line = self.store.line.lock().unwrap();
        line.done.insert(self.number);
        loop {
            let frontier = line.frontier;
            if !line.done.remove(&frontier) {
                break;
            }
            line.frontier += 1;
        }
        drop(line);
        self.store.changed.notify_waiters();
    }
}

/// Takes an append off the in-flight list when it is answered (or dropped).
struct Landing<'a> {
    store: &'a GatedStore,
    id: usize,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.store
            .flights
            .lock()
            .unwrap()
            .retain(|flight| flight.id != self.id);
        self.store.changed.notify_waiters();
    }
}

impl GatedStore {
    fn new() -> Self {
        GatedStore {
            inner: MemoryStore::new(),
            hold: StdMutex::new(None),
            appends: std::sync::atomic::AtomicUsize::new(0),
            line: StdMutex::new(Line::default()),
            flights: StdMutex::new(Vec::new()),
            max_in_flight: StdMutex::new(std::collections::HashMap::new()),
            overlaps: StdMutex::new(Vec::new()),
            changed: Notify::new(),
        }
    }

    fn hold_next(&self, fate: Fate) -> tokio::sync::oneshot::Sender<()> {
        let (release, wait) = tokio::sync::oneshot::channel();
        *self.hold.lock().unwrap() = Some(Hold {
            fate,
            release: wait,
        });
        release
    }

    /// Appends from now on wait (in submission order) until the gate opens.
    fn close_gate(&self) {
        let mut line = self.line.lock().unwrap();
        line.released = Some(line.next);
    }

    /// Lets every waiting append through, in submission order, and no longer holds any.
    fn open_gate(&self) {
        self.line.lock().unwrap().released = None;
        self.changed.notify_waiters();
    }

    /// A place in the line, taken on arrival.
    fn ticket(&self) -> Ticket<'_> {
        let mut line = self.line.lock().unwrap();
        let number = line.next;
        line.next += 1;
        Ticket {
            store: self,
            number,
        }
    }

    /// Waits until `ticket` may be written: the gate lets it through and every earlier one
    /// is done.
    async fn turn(&self, ticket: &Ticket<'_>) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let line = self.line.lock().unwrap();
                let released = line.released.is_none_or(|upto| ticket.number < upto);
                if released && line.frontier == ticket.number {
                    return;
                }
            }
            changed.await;
        }
    }

    fn appends(&self) -> usize {
        self.appends.load(Ordering::SeqCst)
    }

    /// Appends of `stream` handed to the store and not yet answered.
    fn in_flight(&self, stream: &str) -> usize {
        let flights = self.flights.lock().unwrap();
        flights.iter().filter(|f| f.stream == stream).count()
    }

    /// Waits until `done` holds of the appends in flight (re-checked whenever they change).
    /// Panics after a generous time: the condition is one the service must reach.
    async fn wait_until(&self, what: &str, done: impl Fn(&GatedStore) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("never reached: {what}"));
    }

    /// The most appends of `stream` in flight at once.
    fn max_in_flight(&self, stream: &str) -> usize {
        let max = self.max_in_flight.lock().unwrap();
        max.get(stream).copied().unwrap_or(0)
    }

    /// Appends that arrived while another of their stream was in flight and do not continue
    /// it: two writers of one stream at once.
    fn overlaps(&self) -> Vec<String> {
        self.overlaps.lock().unwrap().clone()
    }

    fn take_off(&self, stream: &str, expected: ExpectedVersion, count: usize) -> Landing<'_> {
        let id = self.appends.fetch_add(1, Ordering::SeqCst);
        let base = match expected {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(version) => Some(version + 1),
            ExpectedVersion::Any => None,
        };
        let next = base.map(|base| base + count as u64);
        let mut flights = self.flights.lock().unwrap();
        let ahead = flights.iter().rev().find(|f| f.stream == stream);
        if let Some(ahead) = ahead
            && base.is_some()
            && ahead.next != base
        {
            self.overlaps.lock().unwrap().push(format!(
                "append to {stream} expecting {expected:?} arrived while one for versions \
                 {:?}..{:?} was in flight",
                ahead.base, ahead.next
            ));
        }
        flights.push(Flight {
            id,
            stream: stream.to_owned(),
            base,
            next,
        });
        let now = flights.iter().filter(|f| f.stream == stream).count();
        drop(flights);
        let mut max = self.max_in_flight.lock().unwrap();
        let max = max.entry(stream.to_owned()).or_default();
        *max = (*max).max(now);
        self.changed.notify_waiters();
        Landing { store: self, id }
    }
}

#[async_trait]
impl EventStore for GatedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let hold = self.hold.lock().unwrap().take();
        let Some(hold) = hold else {
            // In line before the append shows as in flight, so nothing a test does on
            // seeing it lets it pass ahead of the appends before it.
            let ticket = self.ticket();
            let _landing = self.take_off(stream, expected, events.len());
            self.turn(&ticket).await;
            return self.inner.append(stream, expected, events).await;
        };
        let _landing = self.take_off(stream, expected, events.len());
        // Decided now, in submission order; the answer waits for the release.
        if hold.fate == Fate::AckLost {
            self.inner.append(stream, expected, events).await?;
        }
        let _ = hold.release.await;
        match hold.fate {
            Fate::NotWritten => Err(StoreError::Unavailable {
                reason: "injected: failed before durable".to_owned(),
                maybe_written: false,
            }),
            Fate::AckLost => Err(StoreError::Unavailable {
                reason: "injected: acknowledgement lost".to_owned(),
                maybe_written: true,
            }),
            Fate::Conflict => Err(StoreError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual: crate::store::ActualVersion::Exact(0),
            }),
            Fate::Panic => panic!("injected: the append panicked"),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, max_count).await
    }

    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
        self.inner.subscribe_all(after).await
    }
}

const START: Timestamp = Timestamp(1_800_000_000_000);

fn command(pool: &PoolId, actor: &str, token: &str, action: Action) -> Command {
    Command {
        pool: pool.clone(),
        actor: ActorId::new(actor),
        role: match actor {
            "admin" => allot_domain::Role::Admin,
            "sweeper" => allot_domain::Role::Sweeper,
            _ => allot_domain::Role::Client,
        },
        attestation: Attestation {
            signed_at: START,
            signature: vec![7; 64],
        },
        token: IdempotencyToken::new(token.to_owned()),
        digest: params_digest(&action),
        action,
        batch: None,
    }
}

fn reserve(pool: &PoolId, token: &str) -> Command {
    let action = Action::Reserve {
        resource: "seat".into(),
        requester: format!("requester-{token}"),
        duration_ms: 60_000,
        count: 1,
    };
    command(pool, "client", token, action)
}

async fn service_with_pool(store: Arc<GatedStore>) -> (Service, PoolId) {
    let service = Service::open(
        store,
        Arc::new(ManualClock::new(START)),
        Arc::new(Projections::new()),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let pool = PoolId::new("p1");
    let declare = Action::DeclarePool {
        capacity: 10,
        closes_at: None,
        units: vec![],
        idempotency_window_ms: 600_000,
    };
    let declared = service
        .submit(command(&pool, "admin", "declare", declare))
        .await
        .unwrap();
    assert!(matches!(declared.outcome, Outcome::PoolDeclared { .. }));
    (service, pool)
}

/// A service dropped without `close` lets go of its store: its shards end once their queues
/// are empty (an open embedded store keeps its data directory locked until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_service_lets_go_of_its_store() {
    let store = Arc::new(GatedStore::new());
    let (service, pool) = service_with_pool(store.clone()).await;
    service.submit(reserve(&pool, "a")).await.unwrap();
    drop(service);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shards still hold the store"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A wave that panics (here: in the store) answers its commands with a recording failure
/// (outcome unknown), and its shard goes on: the pool's next command is decided on the pool
/// as the log holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_that_panics_answers_its_commands_and_the_shard_goes_on() {
    let store = Arc::new(GatedStore::new());
    let (service, pool) = service_with_pool(store.clone()).await;
    let release = store.hold_next(Fate::Panic);
    let before = store.appends();
    let submitted = {
        let service = service.clone();
        let command = reserve(&pool, "a");
        tokio::spawn(async move { service.submit(command).await })
    };
    store
        .wait_until("the held append is in flight", |s| s.appends() > before)
        .await;
    release.send(()).unwrap();
    let answer = submitted.await.unwrap();
    assert!(
        matches!(answer, Err(SubmitError::Recording(_))),
        "{answer:?}"
    );
    let retried = service.submit(reserve(&pool, "a")).await.unwrap();
    assert!(!retried.replayed, "the panicked append wrote nothing");
    assert!(matches!(retried.outcome, Outcome::Reserved { .. }));
    assert_eq!(store.inner.len(), 2);
    service.close().await;
}

/// One held append with `fate`, then the same token again.
async fn held_then_retried(
    fate: Fate,
) -> (
    Arc<GatedStore>,
    Service,
    PoolId,
    Result<Reply, SubmitError>,
    Result<Reply, SubmitError>,
) {
    let store = Arc::new(GatedStore::new());
    let (service, pool) = service_with_pool(store.clone()).await;
    let release = store.hold_next(fate);
    let before = store.appends();
    let first = tokio::spawn({
        let service = service.clone();
        let a = reserve(&pool, "a");
        async move { service.submit(a).await }
    });
    store
        .wait_until("the held append is in flight", |s| s.appends() > before)
        .await;
    release.send(()).unwrap();
    let first = first.await.unwrap();
    let retried = service.submit(reserve(&pool, "a")).await;
    (store, service, pool, first, retried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_fails_its_commands_and_the_pool_is_reloaded() {
    let (store, service, pool, first, retried) = held_then_retried(Fate::NotWritten).await;
    assert!(matches!(first, Err(SubmitError::Recording(_))), "{first:?}");
    assert!(!retried.as_ref().unwrap().replayed, "nothing had landed");
    assert_eq!(store.inner.len(), 2);
    let count = service.projections().counts.get(&pool).unwrap();
    assert_eq!(count.allocated, 1);
    service.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_fails_its_commands_and_a_retry_replays() {
    let (store, service, pool, first, retried) = held_then_retried(Fate::AckLost).await;
    assert!(matches!(first, Err(SubmitError::Recording(_))), "{first:?}");
    let retried = retried.unwrap();
    assert!(retried.replayed, "the landed outcome is answered again");
    assert_eq!(store.inner.len(), 2);
    // The landed event reached the projections though nobody was told of it.
    let count = service.projections().counts.get(&pool).unwrap();
    assert_eq!(count.allocated, 1);
    service.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_decides_the_commands_again_on_the_reloaded_pool() {
    let (store, service, pool, first, retried) = held_then_retried(Fate::Conflict).await;
    let first = first.unwrap();
    assert!(!first.replayed);
    assert!(retried.unwrap().replayed);
    assert_eq!(service.metrics().version_conflicts.get(), 1);
    let count = service.projections().counts.get(&pool).unwrap();
    assert_eq!(count.allocated, store.inner.len() as u64 - 1);
    service.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_an_outcome_in_flight_waits_for_it_to_be_durable() {
    let store = Arc::new(GatedStore::new());
    let (service, pool) = service_with_pool(store.clone()).await;
    let release = store.hold_next(Fate::NotWritten);
    let first = tokio::spawn({
        let service = service.clone();
        let a = reserve(&pool, "a");
        async move { service.submit(a).await }
    });
    while store.appends() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The same token again: decided as a replay of the held outcome, so it has nothing to
    // append, yet it must not be answered before that outcome is durable.
    let retry = tokio::spawn({
        let service = service.clone();
        let a = reserve(&pool, "a");
        async move { service.submit(a).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !retry.is_finished(),
        "a replay was answered before its outcome was durable"
    );
    release.send(()).unwrap();
    let first = first.await.unwrap();
    let retry = retry.await.unwrap();
    assert!(matches!(first, Err(SubmitError::Recording(_))), "{first:?}");
    // Decided after the failed append settled, on the reloaded pool: a new reservation.
    assert!(!retry.unwrap().replayed);
    assert_eq!(store.inner.len(), 2);
    service.close().await;
}

type Submission =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, SubmitError>> + Send>>;

/// Submits `command` and polls it once, so that when this returns the command is in its
/// shard's queue (or already answered). The rest of the submission is the returned future.
async fn enqueue(service: &Service, command: Command) -> Submission {
    let service = service.clone();
    let mut submission: Submission = Box::pin(async move { service.submit(command).await });
    match futures::poll!(submission.as_mut()) {
        std::task::Poll::Ready(answer) => Box::pin(std::future::ready(answer)),
        std::task::Poll::Pending => submission,
    }
}

/// Every submission's answer; panics if one never comes.
async fn answers(
    submissions: Vec<tokio::task::JoinHandle<Result<Reply, SubmitError>>>,
) -> Vec<Result<Reply, SubmitError>> {
    tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join_all(submissions),
    )
    .await
    .expect("a submitter got no answer")
    .into_iter()
    .map(|joined| joined.unwrap())
    .collect()
}

/// Each answer against the pool's stream: an outcome answered (decided or replayed) is the
/// outcome of the event its token recorded; a command refused before it was decided, or
/// turned away at shutdown, recorded nothing. (A recording failure may or may not have
/// landed; callers that know say so.)
async fn assert_answers_match_stream(
    store: &GatedStore,
    pool: &PoolId,
    answered: &[(Command, Result<Reply, SubmitError>)],
) {
    let recorded = store
        .inner
        .read_stream(&pool_stream(pool), 0, usize::MAX)
        .await
        .unwrap();
    let mut outcomes = std::collections::HashMap::new();
    for recorded in &recorded {
        let event = decode_pool(recorded).unwrap();
        let key = (
            event.actor.as_str().to_owned(),
            event.token.as_str().to_owned(),
        );
        assert!(
            outcomes.insert(key, event.outcome()).is_none(),
            "a token recorded twice"
        );
    }
    for (command, answer) in answered {
        let key = (
            command.actor.as_str().to_owned(),
            command.token.as_str().to_owned(),
        );
        match answer {
            Ok(reply) => assert_eq!(
                outcomes.get(&key),
                Some(&reply.outcome),
                "answered {reply:?} to {key:?}, which the stream does not hold"
            ),
            Err(SubmitError::Recording(_)) => {}
            Err(refused) => assert!(
                !outcomes.contains_key(&key),
                "{key:?} refused with {refused:?} but recorded"
            ),
        }
    }
}

/// A submission the test polls itself, keeping the answer if a peek found it.
/// `close` while a wave's append is held (with `first_fate`) and two more commands are
/// queued behind it: `close` is polled once (it stops accepting) before the append is
/// released. A command submitted then is turned away; every other one is answered, and each
/// outcome answered as decided is in the log.
async fn close_with_a_wave_in_flight(first_fate: Option<Fate>) -> Arc<GatedStore> {
    let store = Arc::new(GatedStore::new());
    let (service, pool) = service_with_pool(store.clone()).await;
    let stream = pool_stream(&pool);
    let release_first = first_fate.map(|fate| store.hold_next(fate));
    store.close_gate();
    let mut sent = Vec::new();
    let mut submissions = Vec::new();
    for i in 0..3 {
        let command = reserve(&pool, &format!("c{i}"));
        sent.push(command.clone());
        submissions.push(tokio::spawn(enqueue(&service, command).await));
        if i == 0 {
            store
                .wait_until("the first wave's append is held", |s| {
                    s.in_flight(&stream) == 1
                })
                .await;
        }
    }
    let mut closing = Box::pin(service.close());
    assert!(futures::poll!(closing.as_mut()).is_pending());
    let late = reserve(&pool, "late");
    let late_answer = service.submit(late.clone()).await;
    assert!(
        matches!(late_answer, Err(SubmitError::ShuttingDown)),
        "{late_answer:?}"
    );
    if let Some(release) = release_first {
        release.send(()).unwrap();
    }
    store.open_gate();
    tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .expect("close did not end");
    let mut answered: Vec<_> = sent.into_iter().zip(answers(submissions).await).collect();
    answered.push((late, late_answer));
    assert_answers_match_stream(&store, &pool, &answered).await;
    // A shard has one wave in flight: one append of a pool at a time, each on the last.
    assert_eq!(store.max_in_flight(&stream), 1);
    assert!(store.overlaps().is_empty(), "{:?}", store.overlaps());
    let appended = store.appends();
    assert!(matches!(
        service.submit(reserve(&pool, "later")).await,
        Err(SubmitError::ShuttingDown)
    ));
    assert_eq!(store.appends(), appended);
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_every_command_with_what_the_log_holds() {
    // Everything lands: the held wave and the two commands queued behind it.
    let store = close_with_a_wave_in_flight(None).await;
    assert_eq!(store.inner.len(), 1 + 3);
    // The held append fails: the queued two are decided on the reloaded pool.
    let store = close_with_a_wave_in_flight(Some(Fate::NotWritten)).await;
    assert_eq!(store.inner.len(), 1 + 2);
    // The held append lands but its acknowledgement is lost: it is answered as a failure
    // (a retry replays), and the queued two are decided after it.
    let store = close_with_a_wave_in_flight(Some(Fate::AckLost)).await;
    assert_eq!(store.inner.len(), 1 + 3);
}
