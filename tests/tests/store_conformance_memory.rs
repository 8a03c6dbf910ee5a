//! The conformance suite on the in-memory backend (the port's reference semantics, which the
//! simulator and the command path's tests build on).

use allot_server::store::memory::MemoryStore;

async fn memory() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

allot_tests::store_conformance_tests!(memory);
