//! Start-up from a checkpoint: `GET /v1/reservations/{id}` answers exactly as before the restart
//! for every reservation ever made (live and terminal, labels read back from the log), whether
//! the service starts from a checkpoint plus the tail, or from a checkpoint of the old format
//! (refused, so the whole log is replayed).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use allot_client::Client;
use allot_domain::{Action, ActorId, PoolId, ReservationId};
use allot_projections::Projections;
use allot_replay::RebuildError;
use allot_server::clock::SystemClock;
use allot_server::identity::KeyFile;
use allot_server::server::{FIRST_ADMIN, ServeOptions, Server, key_path};
use allot_server::service::checkpoint;
use allot_server::store::EventStore;
use allot_server::store::embedded::EmbeddedStore;
use allot_tools::inspect;
use serde_json::Value;

async fn start(store: &Arc<dyn EventStore>, keys: &Path, projections: Projections) -> Server {
    Server::start(
        Arc::clone(store),
        Arc::new(SystemClock),
        Arc::new(projections),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            metrics_listen: "127.0.0.1:0".parse().expect("address"),
            keys_dir: keys.to_owned(),
            server_key: None,
            sweeper: false,
            edge: Default::default(),
        },
    )
    .await
    .expect("service starts")
}

fn admin(service: &Server, keys: &Path) -> Client {
    let (file, key) = KeyFile::read(&key_path(keys, FIRST_ADMIN)).expect("admin key");
    Client::new(
        format!("http://{}", service.addr),
        ActorId::new(file.actor),
        key,
    )
}

async fn send(client: &Client, pool: &str, action: Action, token: &str) -> Value {
    let answer = client
        .send(&PoolId::new(pool), &action, token)
        .await
        .expect("request");
    assert!(answer.is_success(), "{token}: {answer:?}");
    answer.body
}

async fn reserve(
    client: &Client,
    pool: &str,
    resource: &str,
    requester: &str,
    count: u32,
    duration_ms: u64,
) -> u64 {
    let body = send(
        client,
        pool,
        Action::Reserve {
            resource: resource.to_owned(),
            requester: requester.to_owned(),
            duration_ms,
            count,
        },
        &format!("reserve-{pool}-{requester}"),
    )
    .await;
    body["reservation_id"]
        .as_str()
        .and_then(ReservationId::parse)
        .map(|id| id.seq)
        .expect("reservation id")
}

/// Every reservation's answer (and an unknown one's), in id order.
async fn answers(client: &Client, ids: &[ReservationId]) -> Vec<(u16, Value)> {
    let mut all = Vec::new();
    for id in ids {
        let answer = client.reservation(id).await.expect("request");
        all.push((answer.status, answer.body));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_answer_the_same_after_restarts_from_checkpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    let checkpoint_path = dir.path().join(checkpoint::CHECKPOINT_FILE);
    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(dir.path()).await.expect("store"));

    let service = start(&store, &keys, Projections::new()).await;
    let client = admin(&service, &keys);
    let declare = |units: &[&str]| Action::DeclarePool {
        capacity: 100,
        closes_at: None,
        units: units.iter().map(|unit| (*unit).to_owned()).collect(),
        idempotency_window_ms: 3_600_000,
    };
    send(&client, "hall", declare(&[]), "declare-hall").await;
    send(&client, "seats", declare(&["a1", "a2"]), "declare-seats").await;
    let mut held = Vec::new();
    for (requester, count) in [("ann", 1), ("bob", 3), ("cy", 2), ("di", 1)] {
        held.push(reserve(&client, "hall", "vip-tier", requester, count, 600_000).await);
    }
    let lapsing = reserve(&client, "hall", "general", "eve", 2, 1_000).await;
    let seat = reserve(&client, "seats", "a2", "fay", 1, 600_000).await;
    send(
        &client,
        "hall",
        Action::ConfirmReservation {
            reservation: held[0],
        },
        "confirm",
    )
    .await;
    send(
        &client,
        "hall",
        Action::CancelReservation {
            reservation: held[1],
        },
        "cancel",
    )
    .await;
    send(
        &client,
        "seats",
        Action::ConfirmReservation { reservation: seat },
        "confirm-seat",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send(
        &client,
        "hall",
        Action::ExpireReservation {
            reservation: lapsing,
        },
        "expire",
    )
    .await;

    let mut ids: Vec<ReservationId> = [
        (1..=5).map(|seq| ("hall", seq)).collect::<Vec<_>>(),
        vec![("seats", 1)],
    ]
    .concat()
    .into_iter()
    .map(|(pool, seq)| ReservationId {
        pool: PoolId::new(pool),
        seq,
    })
    .collect();
    ids.push(ReservationId {
        pool: PoolId::new("hall"),
        seq: 6,
    });
    let before = answers(&client, &ids).await;
    assert_eq!(before[1].1["state"], "released", "{:?}", before[1]);
    assert_eq!(before[1].1["requester"], "bob");
    assert_eq!(before[4].1["state"], "expired");
    assert_eq!(before[4].1["resource"], "general");
    assert_eq!(before[5].1["resource"], "a2");
    assert_eq!(before[6].0, 404);
    service.shutdown().await.expect("shutdown");

    // A checkpoint of the whole log so far.
    let bar = inspect::progress_bar(None, "");
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let rebuild = inspect::rebuild(store.as_ref(), None, &bar)
        .await
        .expect("rebuild");
    let mut taken = rebuild.checkpoint();
    checkpoint::record_chain(&mut taken, store.as_ref())
        .await
        .expect("chain");
    assert!(taken.chain.is_some(), "the embedded log is chained");
    // Over another history (its chain value differs) the checkpoint is not used.
    let mut foreign = taken.clone();
    foreign.chain = Some([7; 32]);
    checkpoint::write_atomically(&checkpoint_path, &foreign.to_bytes().expect("encode"))
        .expect("write checkpoint");
    let ignored = checkpoint::projections_at_start(&checkpoint_path, store.as_ref()).await;
    assert_eq!(
        ignored.applied(),
        0,
        "a checkpoint of another history was used"
    );
    let bytes = taken.to_bytes().expect("encode");
    checkpoint::write_atomically(&checkpoint_path, &bytes).expect("write checkpoint");

    // Start from it; one more command lands after it (the tail of the next start).
    let restored = checkpoint::projections_at_start(&checkpoint_path, store.as_ref()).await;
    assert_eq!(restored.binding.len(), 6);
    let service = start(&store, &keys, restored).await;
    let client = admin(&service, &keys);
    assert_eq!(answers(&client, &ids).await, before);
    send(
        &client,
        "hall",
        Action::CancelReservation {
            reservation: held[2],
        },
        "cancel-cy",
    )
    .await;
    let after_tail = answers(&client, &ids).await;
    assert_eq!(after_tail[2].1["state"], "released");
    service.shutdown().await.expect("shutdown");

    let service = start(
        &store,
        &keys,
        checkpoint::projections_at_start(&checkpoint_path, store.as_ref()).await,
    )
    .await;
    let client = admin(&service, &keys);
    assert_eq!(answers(&client, &ids).await, after_tail);
    service.shutdown().await.expect("shutdown");

    // A checkpoint of the previous format is refused; the whole log is replayed instead.
    let mut old = b"ALLOTCP1".to_vec();
    old.extend_from_slice(&[1, 1, 9, 0, 0, 0, 0, 0]);
    checkpoint::write_atomically(&checkpoint_path, &old).expect("write old checkpoint");
    let error = checkpoint::read_checkpoint(&checkpoint_path).expect_err("old format");
    assert!(
        matches!(
            error,
            checkpoint::CheckpointError::Malformed {
                source: RebuildError::CheckpointFormat { found: 1 },
                ..
            }
        ),
        "{error}"
    );
    let replayed = checkpoint::projections_at_start(&checkpoint_path, store.as_ref()).await;
    assert_eq!(
        replayed.applied(),
        0,
        "nothing taken from the old checkpoint"
    );
    let service = start(&store, &keys, replayed).await;
    let client = admin(&service, &keys);
    assert_eq!(answers(&client, &ids).await, after_tail);
    service.shutdown().await.expect("shutdown");
}

/// Where start-up with a checkpoint spends its time, on a data directory left by
/// `allot bench replay --data DIR` (which ends with a checkpoint of the whole log):
/// `ALLOT_STARTUP_DIR=DIR cargo test --release -p allot-infra --test checkpoint_start -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ALLOT_STARTUP_DIR, a data directory with a large log and its checkpoint"]
async fn startup_phases_on_a_large_log() {
    let Some(dir) = std::env::var_os("ALLOT_STARTUP_DIR") else {
        eprintln!("ALLOT_STARTUP_DIR is not set; nothing to measure");
        return;
    };
    let dir = Path::new(&dir);
    let started = std::time::Instant::now();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir).await.expect("store"));
    let opened = started.elapsed();
    let checkpoint = checkpoint::read_checkpoint(&dir.join(checkpoint::CHECKPOINT_FILE))
        .expect("readable checkpoint")
        .expect("a checkpoint");
    let read = started.elapsed();
    let projections = Projections::from_packed(&checkpoint.projections);
    let restored = started.elapsed();
    let service = allot_server::service::Service::open(
        store,
        Arc::new(SystemClock),
        Arc::new(projections),
        Arc::new(allot_server::metrics::Metrics::new()),
    )
    .await
    .expect("service");
    let serving = started.elapsed();
    eprintln!(
        "store open {:.3} s, checkpoint read+decode {:.3} s, restore {:.3} s, service open (actors, tail) {:.3} s, total {:.3} s; {} reservations",
        opened.as_secs_f64(),
        (read - opened).as_secs_f64(),
        (restored - read).as_secs_f64(),
        (serving - restored).as_secs_f64(),
        serving.as_secs_f64(),
        checkpoint.projections.binding.len(),
    );
    service.close().await;
}
