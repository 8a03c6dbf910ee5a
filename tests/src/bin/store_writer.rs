//! Appends to an embedded store until killed, printing each acknowledged append.
//!
//! Usage: `store_writer DIR RUN`. Several tasks append concurrently, each to its own stream
//! (`own-N`, with exact versions) and to a shared one (`shared`, any version). Every append
//! carries 1 to 3 events whose payloads read `TAG|INDEX|COUNT|padding`, TAG unique per append.
//! After an append is acknowledged it prints `ack STREAM FIRST_VERSION COUNT TAG` and flushes, so
//! whoever kills the process knows which appends were promised durable.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot_server::store::embedded::EmbeddedStore;
use allot_server::store::{EventStore, ExpectedVersion, ProposedEvent};

const TASKS: usize = 8;
/// The process stops by itself if nobody kills it.
const RUN_TIME_MAX: Duration = Duration::from_secs(30);

fn payload(tag: &str, index: usize, count: usize, pad: usize) -> Vec<u8> {
    let mut bytes = format!("{tag}|{index}|{count}|").into_bytes();
    bytes.resize(bytes.len() + pad, b'.');
    bytes
}

fn ack(stream: &str, first_version: u64, count: usize, tag: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the test is gone; nothing left to report to.
    let _ = writeln!(out, "ack {stream} {first_version} {count} {tag}");
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(run)) = (args.next(), args.next()) else {
        eprintln!("usage: store_writer DIR RUN");
        std::process::exit(2);
    };
    let store = match EmbeddedStore::open(&PathBuf::from(dir)).await {
        Ok(store) => std::sync::Arc::new(store),
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    };
    let deadline = Instant::now() + RUN_TIME_MAX;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let own = format!("own-{task}");
            let mut own_len = match store.read_stream(&own, 0, usize::MAX).await {
                Ok(events) => events.len() as u64,
                Err(e) => panic!("read {own}: {e}"),
            };
            let mut i = 0usize;
            while Instant::now() < deadline {
                i += 1;
                let tag = format!("r{run}t{task}i{i}");
                let count = 1 + (i + task) % 3;
                // Some large events so one batch spans several pages.
                let pad = if i.is_multiple_of(7) { 3000 } else { 40 };
                let events: Vec<ProposedEvent> = (0..count)
                    .map(|index| ProposedEvent {
                        id: [task as u8; 16],
                        kind: "Test".to_owned(),
                        payload: payload(&tag, index, count, pad),
                    })
                    .collect();
                let (stream, expected) = if i.is_multiple_of(3) {
                    ("shared".to_owned(), ExpectedVersion::Any)
                } else {
                    let expected = match own_len {
                        0 => ExpectedVersion::NoStream,
                        n => ExpectedVersion::Exact(n - 1),
                    };
                    (own.clone(), expected)
                };
                match store.append(&stream, expected, events).await {
                    Ok(outcome) => {
                        let first = outcome.last_version + 1 - count as u64;
                        if stream == own {
                            own_len = outcome.last_version + 1;
                        }
                        ack(&stream, first, count, &tag);
                    }
                    Err(e) => panic!("append to {stream}: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        if task.await.is_err() {
            std::process::exit(1);
        }
    }
}
