//! The batching client over a connection that drops answers: a proxy between it and a real
//! server cuts connections after the server has started answering (so the batch was decided)
//! and sometimes part-way through an answer. Every command must still get exactly one outcome,
//! decided once: the resends replay what was decided.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use allot_client::{Batcher, BatcherConfig, Outcome};
use allot_domain::{Action, PoolId, Role};
use support::{Harness, declare};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const POOLS: usize = 4;
const CLIENTS: usize = 200;
const ROUNDS: usize = 3;

/// A TCP proxy to `upstream`. Connection `n` forwards `n % 4` reads of the server's answers,
/// then closes both sides at the next one: every connection dies, most with a whole request
/// forwarded and decided but its answer (or the rest of it) lost.
async fn dropping_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let cut = Arc::new(AtomicUsize::new(0));
    let cuts = Arc::clone(&cut);
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((client, _)) = listener.accept().await {
            let budget = n % 4;
            n += 1;
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            tokio::spawn(relay(client, server, budget, Arc::clone(&cuts)));
        }
    });
    (format!("http://{addr}"), cut)
}

async fn relay(client: TcpStream, server: TcpStream, budget: usize, cuts: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded = 0;
    loop {
        match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if forwarded == budget {
                    cuts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                forwarded += 1;
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping both halves closes both connections.
    requests.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_is_lost_or_applied_twice_when_answers_are_dropped() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 11).await;
    for p in 0..POOLS {
        h.admin_raw
            .send(
                &format!("p{p}"),
                &declare(1_000_000),
                &format!("declare-p{p}"),
            )
            .await
            .expect_ok(201);
    }
    let upstream = h.base.trim_start_matches("http://").to_owned();
    let (proxy, cuts) = dropping_proxy(upstream).await;
    let config = BatcherConfig {
        max_batch: 64,
        attempts: 30,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..BatcherConfig::default()
    };
    let batcher = Batcher::new(&proxy, shop.id.clone(), shop.key.clone(), config).expect("batcher");

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let batcher = batcher.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for round in 0..ROUNDS {
                let pool = PoolId::new(format!("p{}", (client + round) % POOLS));
                let reserve = Action::Reserve {
                    resource: "seat".into(),
                    requester: format!("r{client}"),
                    duration_ms: 600_000,
                    count: 1,
                };
                let reserved = batcher.submit(pool, reserve).await;
                let reserved = reserved.unwrap_or_else(|e| panic!("reserve unanswered: {e}"));
                let Outcome::Reserved { reservation, .. } = &reserved.outcome else {
                    panic!("reserve: {:?}", reserved.outcome);
                };
                let confirm = Action::ConfirmReservation {
                    reservation: reservation.seq,
                };
                let confirmed = batcher
                    .submit(reservation.pool.clone(), confirm)
                    .await
                    .unwrap_or_else(|e| panic!("confirm unanswered: {e}"));
                assert_eq!(
                    confirmed.outcome,
                    Outcome::Confirmed {
                        reservation: reservation.clone()
                    }
                );
                answers.push((reserved, confirmed));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("client task"));
    }
    assert_eq!(answers.len(), CLIENTS * ROUNDS);

    // One reservation per reserve: no two reserves were answered with the same one, and the
    // projections hold exactly as many as reserves were answered, each confirmed once.
    let mut ids = HashSet::new();
    let mut per_pool = [0u64; POOLS];
    for (reserved, _) in &answers {
        let Outcome::Reserved { reservation, .. } = &reserved.outcome else {
            unreachable!("checked above");
        };
        assert!(
            ids.insert(reservation.clone()),
            "{reservation} answered twice"
        );
        let pool: usize = reservation.pool.as_str()[1..].parse().expect("pool index");
        per_pool[pool] += 1;
    }
    let contents = h.service().service.projections().contents();
    for (p, expected) in per_pool.iter().enumerate() {
        let count = &contents.counts[&format!("p{p}")];
        assert_eq!(count.reservations, *expected, "pool p{p}: {count:?}");
        assert_eq!(count.confirmed, *expected, "pool p{p}: {count:?}");
        assert_eq!(count.allocated, *expected, "pool p{p}: {count:?}");
    }
    assert_eq!(contents.binding.len(), CLIENTS * ROUNDS);

    // The faults happened and were recovered by resending: some outcomes came back replayed.
    let stats = batcher.stats();
    let replayed = answers
        .iter()
        .flat_map(|(reserved, confirmed)| [reserved, confirmed])
        .filter(|answer| answer.replayed)
        .count();
    eprintln!(
        "{} cuts; {} requests, {} resent, {} members resent, {replayed} outcomes replayed",
        cuts.load(Ordering::Relaxed),
        stats.requests,
        stats.resent_batches,
        stats.resent_members
    );
    assert!(cuts.load(Ordering::Relaxed) > 0, "the proxy never cut");
    assert!(stats.resent_batches > 0, "{stats:?}");
    assert!(replayed > 0, "no replayed outcome after {stats:?}");
}

/// A member the server cannot read refuses its whole batch; the batcher splits the batch until
/// that member is alone, so only it gets the refusal and the others are decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_member_is_refused_alone() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 12).await;
    h.admin_raw
        .send("hall", &declare(1_000), "declare-hall")
        .await
        .expect_ok(201);
    // A long linger: every command below goes in one batch.
    let config = BatcherConfig {
        linger: Duration::from_millis(200),
        ..BatcherConfig::default()
    };
    let batcher =
        Batcher::new(&h.base, shop.id.clone(), shop.key.clone(), config).expect("batcher");
    let mut submits = Vec::new();
    for n in 0..9u64 {
        let batcher = batcher.clone();
        // Reservation 0 does not exist and cannot be named (`hall:0` is not a reservation id).
        let action = if n == 4 {
            Action::ConfirmReservation { reservation: 0 }
        } else {
            Action::Reserve {
                resource: "seat".into(),
                requester: format!("r{n}"),
                duration_ms: 600_000,
                count: 1,
            }
        };
        submits.push(tokio::spawn(async move {
            batcher.submit(PoolId::new("hall"), action).await
        }));
    }
    let mut refused = 0;
    for (n, submit) in submits.into_iter().enumerate() {
        match submit.await.expect("submit task") {
            Ok(answer) if n != 4 => {
                assert!(
                    matches!(answer.outcome, Outcome::Reserved { .. }),
                    "{answer:?}"
                );
            }
            Err(allot_client::SubmitError::Refused { status: 400, .. }) if n == 4 => refused += 1,
            other => panic!("command {n}: {other:?}"),
        }
    }
    assert_eq!(refused, 1);
    let stats = batcher.stats();
    assert!(stats.requests > 1, "the batch was not split: {stats:?}");
    let contents = h.service().service.projections().contents();
    assert_eq!(contents.counts["hall"].reservations, 8);
}

/// Members answered 503 inside a 200 batch answer (here `recording-failure`: the store failed
/// appends, or wrote them and lost the acknowledgement) are resent with their tokens until
/// decided; the log holds each reserve and each confirm once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_answered_503_are_resent_until_decided() {
    use allot_server::clock::SystemClock;
    use allot_server::server::{FIRST_ADMIN, ServeOptions, Server, key_path};
    use allot_server::store::EventStore;
    use allot_tests::sim::store::{FaultRates, FaultyStore};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FaultyStore::new(5, FaultRates::default()));
    let server = Server::start(
        Arc::clone(&store) as Arc<dyn EventStore>,
        Arc::new(SystemClock),
        Arc::new(allot_projections::Projections::new()),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("loopback"),
            metrics_listen: "127.0.0.1:0".parse().expect("loopback"),
            keys_dir: dir.path().join("keys"),
            server_key: None,
            sweeper: false,
            edge: Default::default(),
        },
    )
    .await
    .expect("server starts");
    let base = format!("http://{}", server.addr);
    let (file, admin_key) =
        allot_server::identity::KeyFile::read(&key_path(&dir.path().join("keys"), FIRST_ADMIN))
            .expect("admin key");
    let admin = allot_client::Client::new(
        base.clone(),
        allot_domain::ActorId::new(file.actor),
        admin_key,
    );
    let shop_key = ed25519_dalek::SigningKey::from_bytes(&[13; 32]);
    let registered = admin
        .register_actor(
            &allot_domain::ActorId::new("shop"),
            Role::Client,
            shop_key.verifying_key().to_bytes(),
            "register-shop",
        )
        .await
        .expect("register");
    assert!(registered.is_success(), "{registered:?}");
    for p in 0..POOLS {
        let declared = admin
            .send(
                &PoolId::new(format!("p{p}")),
                &declare(1_000_000),
                &format!("declare-p{p}"),
            )
            .await
            .expect("declare");
        assert!(declared.is_success(), "{declared:?}");
    }
    store.set_rates(FaultRates {
        append_fails_before_durable: 150,
        append_ack_lost: 100,
        read_fails: 0,
    });
    let config = BatcherConfig {
        max_batch: 32,
        attempts: 60,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(10),
        ..BatcherConfig::default()
    };
    let batcher =
        Batcher::new(&base, allot_domain::ActorId::new("shop"), shop_key, config).expect("batcher");
    let mut clients = Vec::new();
    for client in 0..100usize {
        let batcher = batcher.clone();
        clients.push(tokio::spawn(async move {
            let pool = PoolId::new(format!("p{}", client % POOLS));
            let reserve = Action::Reserve {
                resource: "seat".into(),
                requester: format!("r{client}"),
                duration_ms: 600_000,
                count: 1,
            };
            let reserved = batcher
                .submit(pool, reserve)
                .await
                .unwrap_or_else(|e| panic!("reserve: {e}"));
            let Outcome::Reserved { reservation, .. } = reserved.outcome else {
                panic!("reserve: {:?}", reserved.outcome);
            };
            let confirm = Action::ConfirmReservation {
                reservation: reservation.seq,
            };
            let confirmed = batcher
                .submit(reservation.pool.clone(), confirm)
                .await
                .unwrap_or_else(|e| panic!("confirm: {e}"));
            assert!(
                matches!(confirmed.outcome, Outcome::Confirmed { .. }),
                "{confirmed:?}"
            );
            reservation
        }));
    }
    let mut ids = HashSet::new();
    for client in clients {
        let reservation = client.await.expect("client task");
        assert!(
            ids.insert(reservation.clone()),
            "{reservation} answered twice"
        );
    }
    store.pause(true);
    let faults = store.stats();
    let stats = batcher.stats();
    eprintln!("{faults:?}; {} members resent", stats.resent_members);
    assert!(stats.resent_members > 0, "no member was resent: {stats:?}");

    let events = store
        .inner()
        .read_all(None, 1_000_000)
        .await
        .expect("read the log");
    let count = |kind: &str| events.iter().filter(|event| event.kind == kind).count();
    assert_eq!(count("Reserved"), ids.len(), "reserves in the log");
    assert_eq!(count("Confirmed"), ids.len(), "confirms in the log");
    server.shutdown().await.expect("shutdown");
}

/// A proxy that forwards the first connection's request but drops its answer (saying so on
/// `cut`), and forwards every later connection whole.
async fn first_answer_lost_proxy(upstream: String) -> (String, tokio::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let (cut, cut_seen) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let budget = if first { 0 } else { usize::MAX };
            first = false;
            let cut = cut.clone();
            tokio::spawn(async move {
                let cuts = Arc::new(AtomicUsize::new(0));
                relay(client, server, budget, Arc::clone(&cuts)).await;
                if cuts.load(Ordering::Relaxed) > 0 {
                    let _ = cut.send(()).await;
                }
            });
        }
    });
    (format!("http://{addr}"), cut_seen)
}

/// A command whose answer was lost and whose resend the server refuses (here: stale, the
/// server's clock having moved past the signature's skew; the resend keeps its first signing
/// time) may have been decided, so the batcher says `Unanswered` with its token, never
/// `Refused`, which would tell the caller nothing was decided. And it was decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resend_is_unanswered_not_refused() {
    use allot_server::clock::{Clock, ManualClock, SystemClock};
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let h = Harness::start_with(clock.clone(), false).await;
    let shop = h.register("shop", Role::Client, 11).await;
    h.admin_raw
        .send("p0", &declare(10), "declare-p0")
        .await
        .expect_ok(201);
    let upstream = h.base.trim_start_matches("http://").to_owned();
    let (proxy, mut cut) = first_answer_lost_proxy(upstream).await;
    let config = BatcherConfig {
        linger: Duration::ZERO,
        attempts: 5,
        backoff_initial: Duration::from_millis(300),
        backoff_max: Duration::from_millis(300),
        ..BatcherConfig::default()
    };
    let batcher = Batcher::new(&proxy, shop.id.clone(), shop.key.clone(), config).expect("batcher");
    let reserve = Action::Reserve {
        resource: "seat".into(),
        requester: "r1".into(),
        duration_ms: 600_000,
        count: 1,
    };
    let submitted = tokio::spawn(async move { batcher.submit(PoolId::new("p0"), reserve).await });
    cut.recv().await.expect("the first answer was cut");
    // Past the skew before the resend (sent 300 ms later) arrives.
    clock.advance_ms(allot_domain::signing::SIGNED_AT_SKEW_MS + 60_000);
    let answer = submitted.await.expect("submit task");
    match answer {
        Err(allot_client::SubmitError::Unanswered { token, last, .. }) => {
            assert!(last.starts_with("401"), "{last}");
            // Read from the service itself: a signed read would be stale on this clock.
            let count = h
                .service()
                .service
                .projections()
                .counts
                .get(&PoolId::new("p0"))
                .unwrap_or_default();
            assert_eq!(count.allocated, 1, "the first send was decided: {token}");
        }
        other => panic!("expected Unanswered, got {other:?}"),
    }
    h.shutdown().await;
}
