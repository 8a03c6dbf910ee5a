//! Runs the in-test EventStoreDB / KurrentDB server (`allot_tests::esdb_server`) as a process,
//! for end-to-end tests and manual runs of `allot` against a store without a real server.
//!
//! Usage: `esdb_test_server`. Prints `url CONNECTION_STRING` once listening (flushed, one line),
//! then serves until killed or until its standard input closes. The log is in memory only.

use std::io::Write;

use allot_tests::esdb_server::EsdbTestServer;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let server = EsdbTestServer::start().await;
    let mut out = std::io::stdout().lock();
    writeln!(out, "url {}", server.url())?;
    out.flush()?;
    drop(out);
    // Whoever started us owns our lifetime: stop when its end of our stdin closes.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await? > 0 {}
    drop(server);
    Ok(())
}
