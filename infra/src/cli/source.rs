//! Opening the store a subcommand names: an embedded data directory or a connection string.

use std::path::Path;
use std::sync::Arc;

use allot_server::store::{self, EventStore};

/// Opens the store named by a connection string, or the embedded store in `data`.
pub async fn open_store(data: &Path, url: Option<&str>) -> Result<Arc<dyn EventStore>, String> {
    match url {
        Some(url) if store::esdb::is_esdb_url(url) => store::esdb::open_esdb(url)
            .await
            .map(|store| Arc::new(store) as Arc<dyn EventStore>)
            .map_err(|error| error.to_string()),
        Some(url) => Err(format!(
            "{url}: a store is an esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover:// connection string"
        )),
        None => open_embedded(data)
            .await
            .map(|store| Arc::new(store) as Arc<dyn EventStore>),
    }
}

/// Opens the embedded store in `data` (creating it if empty).
pub async fn open_embedded(data: &Path) -> Result<store::embedded::EmbeddedStore, String> {
    store::embedded::EmbeddedStore::open(data)
        .await
        .map_err(|error| error.to_string())
}

/// Whether an audit or rebuild source is a connection string rather than a directory.
pub fn is_connection_string(source: &str) -> bool {
    source.contains("://")
}

/// The data directory an audit or rebuild source names, which must already exist (auditing a
/// mistyped path must not create an empty store).
pub fn existing_dir(source: &str) -> Result<&Path, String> {
    let dir = Path::new(source);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("{source}: no such data directory"))
    }
}

/// Opens an audit or rebuild source: a connection string or an existing data directory.
pub async fn open_source(source: &str) -> Result<Arc<dyn EventStore>, String> {
    if is_connection_string(source) {
        return open_store(Path::new("."), Some(source)).await;
    }
    open_store(existing_dir(source)?, None).await
}
