//! The conformance suite on the embedded backend, a fresh data directory per case.

use allot_server::store::embedded::EmbeddedStore;

async fn embedded() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    (store, dir)
}

allot_tests::store_conformance_tests!(embedded);

/// The suite also runs as one sequence, as a backend without a test macro would call it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_sequence() {
    allot_tests::store_conformance::run_all(embedded).await;
}
