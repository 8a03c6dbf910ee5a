//! The HTTP edge over real sockets: slow clients are timed out without slowing a normal client,
//! connections past the maximum are refused at once, every malformed request gets a problem
//! and changes nothing, and `/metrics` answers on its own listener only.

mod support;

use std::sync::Arc;
use std::time::Duration;

use allot_domain::{ReservationId, Role};
use allot_server::clock::SystemClock;
use allot_server::http::edge::EdgeLimits;
use allot_server::server::METRICS_LISTEN;
use support::{Actor, Harness, RawConnection, declare, now, request_parts, reserve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Slow connections held open at once: the acceptance figure.
const SLOW_CONNECTIONS: usize = 1_000;
/// The head and body timeouts of the slow-client test: long enough for the normal client to do
/// its requests while every slow connection is open, short enough for a test.
const SLOW_TIMEOUT: Duration = Duration::from_secs(3);
/// How late after its timeout a slow connection may be seen closed (a thousand close at once on
/// two cores, in a debug build).
const CLOSE_MARGIN: Duration = Duration::from_secs(3);
/// How often a trickling connection sends one more byte of its head.
const TRICKLE_EVERY: Duration = Duration::from_millis(250);
/// Requests of the normal client, and the latency its 99th percentile must stay under.
const NORMAL_REQUESTS: usize = 100;
const P99_MAX: Duration = Duration::from_millis(100);

/// Raises this process's open-files limit to at least `wanted` (up to the hard limit), so one
/// process can hold both ends of the slow connections.
fn raise_open_files(wanted: u64) {
    let soft = rlimit::increase_nofile_limit(wanted).expect("raise the open-files limit");
    assert!(
        soft >= wanted,
        "the open-files hard limit is below the {wanted} this test needs (soft {soft})"
    );
}

#[derive(Debug, Clone, Copy)]
enum Slowness {
    /// Sends part of a head, then one byte at a time, never its end.
    TrickledHead,
    /// Sends a whole head announcing a body, then one byte of the body and nothing more.
    SilentBody,
}

/// Holds one slow connection until the server closes it; returns how long after `opened` that
/// was, or an error if it stayed open past `opened + timeout + CLOSE_MARGIN`.
async fn hold_slow(
    stream: TcpStream,
    slowness: Slowness,
    opened: Instant,
    timeout: Duration,
) -> Result<Duration, String> {
    let head: &[u8] = match slowness {
        Slowness::TrickledHead => {
            b"POST /v1/pools/p/reservations HTTP/1.1\r\nhost: allot\r\nx-slow: "
        }
        Slowness::SilentBody => {
            b"POST /v1/pools/p/reservations HTTP/1.1\r\nhost: allot\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        }
    };
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(head)
        .await
        .map_err(|e| format!("write head: {e}"))?;
    let deadline = opened + timeout + CLOSE_MARGIN;
    let mut trickle = tokio::time::interval_at(opened + TRICKLE_EVERY, TRICKLE_EVERY);
    let mut chunk = [0u8; 1024];
    loop {
        tokio::select! {
            read = reader.read(&mut chunk) => match read {
                // An answer may come before the close (a timed-out body is answered).
                Ok(read) if read > 0 => {}
                _ => return Ok(opened.elapsed()),
            },
            _ = trickle.tick(), if matches!(slowness, Slowness::TrickledHead) => {
                // A failed write means the server has closed; the read sees it.
                let _ = writer.write_all(b"a").await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("{slowness:?} connection still open after {:?}", opened.elapsed()));
            }
        }
    }
}

/// The 99th percentile (nearest rank) of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let rank = (samples.len() * 99).div_ceil(100);
    samples[rank.max(1) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_clients_are_timed_out_while_a_normal_client_is_served() {
    // Both ends of every slow connection live in this process.
    raise_open_files(2 * SLOW_CONNECTIONS as u64 + 512);
    let edge = EdgeLimits {
        connections_max: SLOW_CONNECTIONS + 64,
        head_timeout: SLOW_TIMEOUT,
        body_timeout: SLOW_TIMEOUT,
        ..EdgeLimits::default()
    };
    let h = Harness::start_with_edge(Arc::new(SystemClock), false, edge).await;
    let shop = h.register("shop", Role::Client, 71).await;
    h.admin_raw
        .send("p", &declare(1_000_000), "declare-p")
        .await
        .expect_ok(201);
    // The normal client's connection is open before the slow ones arrive.
    shop.send("p", &reserve("warm-up", 600_000), "warm-up")
        .await
        .expect_ok(201);

    let addr = h.service().addr;
    let mut slow = Vec::with_capacity(SLOW_CONNECTIONS);
    let first_opened = Instant::now();
    for i in 0..SLOW_CONNECTIONS {
        let stream = TcpStream::connect(addr).await.expect("connect slow client");
        let slowness = if i % 2 == 0 {
            Slowness::TrickledHead
        } else {
            Slowness::SilentBody
        };
        let opened = Instant::now();
        slow.push(tokio::spawn(hold_slow(
            stream,
            slowness,
            opened,
            SLOW_TIMEOUT,
        )));
    }

    let mut latencies = Vec::with_capacity(NORMAL_REQUESTS);
    for i in 0..NORMAL_REQUESTS {
        let started = Instant::now();
        if i % 2 == 0 {
            shop.send("p", &reserve(&format!("r{i}"), 600_000), &format!("n{i}"))
                .await
                .expect_ok(201);
        } else {
            h.pool("p").await.expect_ok(200);
        }
        latencies.push(started.elapsed());
    }
    let normal_done = Instant::now();
    assert!(
        normal_done < first_opened + SLOW_TIMEOUT,
        "the normal client finished {:?} after the first slow connection opened: \
         not while all were open",
        normal_done - first_opened
    );
    let p99 = p99(latencies);
    eprintln!("normal client p99 {p99:?} with {SLOW_CONNECTIONS} slow connections open");
    assert!(
        p99 < P99_MAX,
        "p99 {p99:?} with {SLOW_CONNECTIONS} slow clients"
    );

    let mut failures = Vec::new();
    for held in slow {
        match held.await.expect("slow client task") {
            // Closed by the timeout, not before it.
            Ok(open_for) if open_for + Duration::from_millis(20) >= SLOW_TIMEOUT => {}
            Ok(open_for) => failures.push(format!("closed after {open_for:?}, before the timeout")),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SLOW_CONNECTIONS} slow connections wrong, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The server is still fine.
    h.pool("p").await.expect_ok(200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_maximum_are_refused_at_once() {
    const CONNECTIONS_MAX: usize = 8;
    let edge = EdgeLimits {
        connections_max: CONNECTIONS_MAX,
        ..EdgeLimits::default()
    };
    let h = Harness::start_with_edge(Arc::new(SystemClock), false, edge).await;
    let addr = h.service().addr;
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: allot\r\n\r\n";
    // Each held connection has been served once, so the server has accepted and counts it.
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS_MAX {
        let mut connection = RawConnection::open(addr).await;
        connection.send(healthz).await.expect("send");
        let answer = connection
            .answer(Duration::from_secs(5))
            .await
            .expect("answer");
        answer.expect_ok(200);
        held.push(connection);
    }
    for _ in 0..5 {
        let started = Instant::now();
        let mut extra = RawConnection::open(addr).await;
        // The server may answer and close before it reads the request.
        let _ = extra.send(healthz).await;
        let answer = extra
            .answer(Duration::from_secs(5))
            .await
            .expect("an answer to a refused connection");
        answer.expect_problem(503, "overloaded");
        assert!(extra.closed(Duration::from_secs(5)).await, "not closed");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "refused after {:?}",
            started.elapsed()
        );
    }
    // A held connection still works, and closing one makes room for a new one.
    held[0].send(healthz).await.expect("send");
    held[0]
        .answer(Duration::from_secs(5))
        .await
        .expect("answer")
        .expect_ok(200);
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fresh = RawConnection::open(addr).await;
        let _ = fresh.send(healthz).await;
        let answer = fresh.answer(Duration::from_secs(5)).await.expect("answer");
        if answer.status == 200 {
            break;
        }
        answer.expect_problem(503, "overloaded");
        assert!(
            Instant::now() < deadline,
            "a closed connection's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.shutdown().await;
}

/// A signed reserve on `s1` as raw bytes: the request line, the signed headers, then `extra`
/// header lines (each ending in CRLF) where the test breaks something, then `body`. With no
/// `Content-Length` in `extra`, a correct one is added. Sent as is, it would reserve.
fn signed_reserve(shop: &Actor, token: &str, extra: &[u8], body: Option<&[u8]>) -> Vec<u8> {
    let action = reserve(token, 600_000);
    let (path, json) = request_parts("s1", &action);
    let json = json.to_string();
    let body = body.unwrap_or(json.as_bytes());
    let mut request =
        format!("POST {path} HTTP/1.1\r\nhost: allot\r\ncontent-type: application/json\r\n")
            .into_bytes();
    for (name, value) in shop.headers("s1", &action, token, now()) {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(extra);
    let lower = String::from_utf8_lossy(extra).to_ascii_lowercase();
    if !lower.contains("content-length") && !lower.contains("transfer-encoding") {
        request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

/// A malformed request: its name, the header lines that break it, its body (default: the
/// signed one), and the status it must get.
type Malformed = (&'static str, Vec<u8>, Option<Vec<u8>>, u16);

/// A service with a client `shop` and pool `s1` (capacity 5) holding one reservation.
async fn setup() -> (Harness, Actor, ReservationId) {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 72).await;
    h.admin_raw
        .send("s1", &declare(5), "declare-s1")
        .await
        .expect_ok(201);
    let held = shop
        .send("s1", &reserve("alice", 600_000), "s1-alice")
        .await;
    held.expect_ok(201);
    (h, shop, held.reservation())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_problem_and_change_nothing() {
    let (h, shop, rsv) = setup().await;
    let addr = h.service().addr;
    let before = h.observe(&["s1"], &[&rsv]).await;
    // A sound request's body length, for the headers that lie about it.
    let sound = signed_reserve(&shop, "probe", b"", None);
    let body_len = sound.len() - sound.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;

    let big_header = format!("x-big: {}\r\n", "a".repeat(20 * 1024));
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let over_limit_body = vec![b' '; 64 * 1024 + 1];
    let two_lengths = format!(
        "content-length: {body_len}\r\ncontent-length: {}\r\n",
        body_len + 1
    );
    let equal_lengths = format!("content-length: {body_len}\r\ncontent-length: {body_len}\r\n");
    let length_list = format!("content-length: {body_len}, {body_len}\r\n");
    let chunked_and_length =
        format!("transfer-encoding: chunked\r\ncontent-length: {body_len}\r\n");
    let over_limit_length = format!("content-length: {}\r\n", over_limit_body.len());
    let corpus: Vec<Malformed> = vec![
        (
            "two different Content-Length",
            two_lengths.into_bytes(),
            None,
            400,
        ),
        (
            "two equal Content-Length",
            equal_lengths.into_bytes(),
            None,
            400,
        ),
        ("Content-Length list", length_list.into_bytes(), None, 400),
        (
            "Content-Length not a number",
            b"content-length: 12a\r\n".to_vec(),
            None,
            400,
        ),
        (
            "negative Content-Length",
            b"content-length: -1\r\n".to_vec(),
            None,
            400,
        ),
        (
            "empty Content-Length",
            b"content-length: \r\n".to_vec(),
            None,
            400,
        ),
        (
            "Content-Length past 64 bits",
            b"content-length: 99999999999999999999999\r\n".to_vec(),
            None,
            400,
        ),
        (
            "Content-Length of a terabyte, body never sent",
            b"content-length: 1000000000000\r\n".to_vec(),
            Some(Vec::new()),
            413,
        ),
        (
            "body one byte past the limit, sent",
            over_limit_length.into_bytes(),
            Some(over_limit_body),
            413,
        ),
        (
            "chunked body",
            b"transfer-encoding: chunked\r\n".to_vec(),
            Some(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
            400,
        ),
        (
            "chunked and Content-Length",
            chunked_and_length.into_bytes(),
            None,
            400,
        ),
        (
            "control byte in a header value",
            b"x-a: b\x01c\r\n".to_vec(),
            None,
            400,
        ),
        (
            "NUL in a header value",
            b"x-a: b\x00c\r\n".to_vec(),
            None,
            400,
        ),
        (
            "DEL in a header value",
            b"x-a: b\x7fc\r\n".to_vec(),
            None,
            400,
        ),
        (
            "byte past ASCII in a header value",
            b"x-a: caf\xc3\xa9\r\n".to_vec(),
            None,
            400,
        ),
        (
            "invalid UTF-8 in a header value",
            b"x-a: \xff\xfe\r\n".to_vec(),
            None,
            400,
        ),
        (
            "control byte in a header name",
            b"x-\x01a: b\r\n".to_vec(),
            None,
            400,
        ),
        ("space before the colon", b"x-a : b\r\n".to_vec(), None, 400),
        ("empty header name", b": b\r\n".to_vec(), None, 400),
        (
            "obsolete line folding",
            b"x-a: b\r\n c\r\n".to_vec(),
            None,
            400,
        ),
        ("head too large", big_header.into_bytes(), None, 400),
        ("too many headers", many_headers.into_bytes(), None, 400),
    ];
    let mut requests: Vec<(String, Vec<u8>, u16)> = corpus
        .into_iter()
        .enumerate()
        .map(|(i, (name, extra, body, status))| {
            let request = signed_reserve(&shop, &format!("edge-{i}"), &extra, body.as_deref());
            (name.to_owned(), request, status)
        })
        .collect();
    // Heads broken before the headers.
    let sound_headers = &sound[sound.windows(2).position(|w| w == b"\r\n").unwrap()..];
    let broken_lines: [(&str, &[u8]); 5] = [
        ("garbage request line", b"GARBAGE"),
        (
            "HTTP/2.0 request line",
            b"POST /v1/pools/s1/reservations HTTP/2.0",
        ),
        (
            "two spaces in the request line",
            b"POST  /v1/pools/s1/reservations HTTP/1.1",
        ),
        (
            "target not a URI",
            b"POST /v1/pools/s\xff1/reservations HTTP/1.1",
        ),
        (
            "control byte in the target",
            b"POST /v1/pools/s\x011/reservations HTTP/1.1",
        ),
    ];
    for (name, line) in broken_lines {
        let mut request = line.to_vec();
        request.extend_from_slice(sound_headers);
        requests.push((name.to_owned(), request, 400));
    }

    let mut failures = Vec::new();
    for (name, request, status) in &requests {
        let mut connection = RawConnection::open(addr).await;
        // The server may answer and close before it has read everything.
        let _ = connection.send(request).await;
        let Some(answer) = connection.answer(Duration::from_secs(5)).await else {
            failures.push(format!("{name}: no answer"));
            continue;
        };
        let problem = answer.status == *status
            && answer.content_type == "application/problem+json"
            && answer.code() == Some("invalid-request")
            && answer.body["status"].as_u64() == Some(u64::from(*status))
            && answer.body["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty());
        if !problem {
            failures.push(format!(
                "{name}: wanted {status} invalid-request, got {answer:?}"
            ));
        }
        if !connection.closed(Duration::from_secs(5)).await {
            failures.push(format!("{name}: connection left open"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests answered wrong:\n{}",
        failures.len(),
        requests.len(),
        failures.join("\n")
    );

    // On a keep-alive connection, a malformed request after sound ones, and one pipelined
    // behind a sound one.
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: allot\r\n\r\n".as_slice();
    let malformed = signed_reserve(
        &shop,
        "edge-keep-alive",
        b"content-length: 3\r\ncontent-length: 4\r\n",
        None,
    );
    let mut connection = RawConnection::open(addr).await;
    for _ in 0..2 {
        connection.send(healthz).await.expect("send");
        connection
            .answer(Duration::from_secs(5))
            .await
            .expect("answer")
            .expect_ok(200);
    }
    connection.send(&malformed).await.expect("send");
    connection
        .answer(Duration::from_secs(5))
        .await
        .expect("answer")
        .expect_problem(400, "invalid-request");
    assert!(connection.closed(Duration::from_secs(5)).await);
    let mut connection = RawConnection::open(addr).await;
    connection
        .send(&[healthz, malformed.as_slice()].concat())
        .await
        .expect("send");
    connection
        .answer(Duration::from_secs(5))
        .await
        .expect("answer")
        .expect_ok(200);
    connection
        .answer(Duration::from_secs(5))
        .await
        .expect("answer")
        .expect_problem(400, "invalid-request");
    assert!(connection.closed(Duration::from_secs(5)).await);

    // What the handlers refuse: a body that is not JSON, or not said to be JSON.
    let not_json = signed_reserve(&shop, "edge-not-json", b"", Some(b"{\"resource\": "));
    let text_plain = String::from_utf8(signed_reserve(&shop, "edge-text", b"", None))
        .expect("ascii")
        .replacen(
            "content-type: application/json",
            "content-type: text/plain",
            1,
        );
    for (name, request) in [
        ("body not JSON", not_json),
        ("body not said to be JSON", text_plain.into_bytes()),
    ] {
        let mut connection = RawConnection::open(addr).await;
        connection.send(&request).await.expect("send");
        let answer = connection
            .answer(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{name}: no answer"));
        answer.expect_problem(400, "invalid-request");
    }

    let after = h.observe(&["s1"], &[&rsv]).await;
    assert_eq!(after, before, "a malformed request changed something");
    // Sent whole and sound, the same bytes reserve: the corpus was refused for what it broke.
    let mut connection = RawConnection::open(addr).await;
    connection.send(&sound).await.expect("send");
    connection
        .answer(Duration::from_secs(5))
        .await
        .expect("answer")
        .expect_ok(201);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_on_their_own_listener_only() {
    let default: std::net::SocketAddr = METRICS_LISTEN.parse().expect("default address");
    assert!(default.ip().is_loopback());
    assert_eq!(default.port(), 9464);

    let h = Harness::start().await;
    assert_ne!(h.service().metrics_addr, h.service().addr);
    let metrics = h.get_metrics().await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(
        metrics.content_type.contains("openmetrics-text"),
        "{metrics:?}"
    );
    assert!(
        metrics
            .body
            .as_str()
            .is_some_and(|text| text.contains("allot_sweeper_expired_total")),
        "{metrics:?}"
    );
    h.get("/metrics").await.expect_problem(404, "not-known");
    // The metrics listener serves nothing else.
    let other = h
        .http
        .get(format!("http://{}/healthz", h.service().metrics_addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(other.status(), 404);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_partial_head() {
    let h = Harness::start().await;
    let mut partial = RawConnection::open(h.service().addr).await;
    partial
        .send(b"POST /v1/pools/p HTTP/1.1\r\nhost: a")
        .await
        .expect("send");
    // Connections are accepted in order: once `idle` is answered, `partial` is accepted too.
    // Its head timeout (10 s by default) is far off.
    let mut idle = RawConnection::open(h.service().addr).await;
    idle.send(b"GET /healthz HTTP/1.1\r\nhost: allot\r\n\r\n")
        .await
        .expect("send");
    idle.answer(Duration::from_secs(5))
        .await
        .expect("answer")
        .expect_ok(200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), h.shutdown())
        .await
        .expect("shutdown waited for connections without a request");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(idle.closed(Duration::from_secs(1)).await);
    assert!(partial.closed(Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_by_the_send_timeout() {
    use tokio::io::AsyncWriteExt;
    const SEND_TIMEOUT: Duration = Duration::from_millis(500);
    let edge = EdgeLimits {
        connections_max: 1,
        send_timeout: SEND_TIMEOUT,
        ..EdgeLimits::default()
    };
    let h = Harness::start_with_edge(Arc::new(SystemClock), false, edge).await;
    let addr = h.service().addr;
    // A client with a small receive window asks for the OpenAPI document (tens of KiB) many
    // times over, pipelined, and never reads: the answers fill both sides' buffers.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut stalled = socket.connect(addr).await.expect("connect");
    let started = Instant::now();
    // More answers than any socket buffer holds (thousands × tens of KiB); the writer stops when
    // the server stops reading or closes.
    let writer = tokio::spawn(async move {
        let request = b"GET /openapi.json HTTP/1.1\r\nhost: allot\r\n\r\n";
        for _ in 0..5_000 {
            if stalled.write_all(request).await.is_err() {
                break;
            }
        }
        stalled
    });
    // It holds the only place: others are refused until the send timeout closes it.
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: allot\r\n\r\n";
    loop {
        let mut next = RawConnection::open(addr).await;
        let _ = next.send(healthz).await;
        let answer = next
            .answer(Duration::from_secs(5))
            .await
            .expect("an answer");
        if answer.status == 200 {
            break;
        }
        answer.expect_problem(503, "overloaded");
        assert!(
            started.elapsed() < SEND_TIMEOUT + Duration::from_secs(5),
            "the stalled connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= SEND_TIMEOUT,
        "served after {:?}: the stalled connection was not holding its place",
        started.elapsed()
    );
    writer.abort();
    h.shutdown().await;
}
