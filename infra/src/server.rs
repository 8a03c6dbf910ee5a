//! `allot serve`: the store, the command path, the sweeper and the HTTP API in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use allot_domain::{
    ActorChange, ActorEvent, ActorId, Attestation, IdempotencyToken, Role, signing,
};
use allot_projections::Projections;
use ed25519_dalek::Signer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::http;
use crate::identity::{KeyFile, KeyFileError};
use crate::ledger::{Ledger, LoadError, SubmitError};
use crate::metrics::Metrics;
use crate::store::EventStore;
use crate::sweeper::{self, SweeperKey};

/// The actor names of the keys created at first start.
pub const FIRST_ADMIN: &str = "admin";
pub const FIRST_SWEEPER: &str = "sweeper";

/// Failures starting or running the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("cannot create key directory {path}: {source}")]
    KeyDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register first actors: {0}")]
    Bootstrap(SubmitError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Where the first admin and sweeper keys are (or will be).
pub fn key_path(keys_dir: &Path, actor: &str) -> PathBuf {
    keys_dir.join(format!("{actor}.key"))
}

/// Signs and records a self-registration (only for the first admin and sweeper).
async fn register_self(
    ledger: &Ledger,
    actor: &str,
    role: Role,
    keys_dir: &Path,
) -> Result<(), ServeError> {
    let (file, key) = KeyFile::generate(actor, role);
    let path = key_path(keys_dir, actor);
    file.write_new(&path)?;
    let actor_id = ActorId::new(actor);
    let change = ActorChange::Registered {
        role,
        public_key: key.verifying_key().to_bytes(),
    };
    let (action, params) = http::actor_change_params(&change);
    let token = IdempotencyToken::new(format!("bootstrap:{actor}"));
    let now = ledger.clock().now();
    let bytes = signing::actor_signing_bytes(action, &actor_id, &params, &token, &actor_id, now);
    let event = ActorEvent {
        actor: actor_id.clone(),
        change,
        by: actor_id,
        token,
        attestation: Attestation {
            signed_at: now,
            signature: key.sign(&bytes).to_bytes().to_vec(),
        },
        at: now,
    };
    ledger
        .record_actor_event(event)
        .await
        .map_err(ServeError::Bootstrap)?;
    tracing::info!(actor, role = %role, key = %path.display(), "created first key (mode 0600)");
    Ok(())
}

/// On an empty store, creates the admin and sweeper keys in `keys_dir` and registers them.
/// Returns true if it did.
pub async fn bootstrap_actors(ledger: &Ledger, keys_dir: &Path) -> Result<bool, ServeError> {
    if !ledger.actors().is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(keys_dir).map_err(|source| ServeError::KeyDir {
        path: keys_dir.to_owned(),
        source,
    })?;
    register_self(ledger, FIRST_ADMIN, Role::Admin, keys_dir).await?;
    register_self(ledger, FIRST_SWEEPER, Role::Sweeper, keys_dir).await?;
    Ok(true)
}

/// The projections `allot serve` starts from: those of the checkpoint `allot rebuild` wrote at
/// `path` (the ledger then replays only the log after it), or empty ones, i.e. a replay of the
/// whole log, when there is none or it cannot be used. A checkpoint of another format or a
/// damaged one is never partly trusted.
pub fn projections_at_start(path: &Path) -> Projections {
    match crate::inspect::read_checkpoint(path) {
        Ok(Some(checkpoint)) => {
            tracing::info!(
                path = %path.display(),
                position = ?checkpoint.position,
                reservations = checkpoint.projections.binding.len(),
                "starting from checkpoint"
            );
            Projections::from_snapshot(&checkpoint.projections)
        }
        Ok(None) => Projections::new(),
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "ignoring checkpoint; replaying the whole log"
            );
            Projections::new()
        }
    }
}

/// A running service.
pub struct Service {
    pub ledger: Ledger,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

/// How to run the service.
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub keys_dir: PathBuf,
    /// Run the expiry sweeper in this process (with the key at `keys_dir/sweeper.key`).
    pub sweeper: bool,
}

impl Service {
    /// Opens the ledger over `store`, bootstraps keys on first start, starts the sweeper and
    /// serves HTTP on `options.listen`.
    pub async fn start(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        projections: Arc<Projections>,
        options: ServeOptions,
    ) -> Result<Service, ServeError> {
        let metrics = Arc::new(Metrics::new());
        let shared = store.shared_with_other_writers();
        let ledger = Ledger::open(store, clock, projections, metrics).await?;
        if shared {
            // Other instances write to this store: follow it so their writes (and actor
            // revocations) reach this instance at once.
            ledger
                .follow_store()
                .await
                .map_err(|error| ServeError::Load(LoadError::Store(error)))?;
        }
        if bootstrap_actors(&ledger, &options.keys_dir).await? {
            crate::out!(
                "first start: created keys {} (admin) and {} (sweeper), mode 0600",
                key_path(&options.keys_dir, FIRST_ADMIN).display(),
                key_path(&options.keys_dir, FIRST_SWEEPER).display()
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sweeper = if options.sweeper {
            let (file, key) = KeyFile::read(&key_path(&options.keys_dir, FIRST_SWEEPER))?;
            let sweeper_key = SweeperKey {
                actor: ActorId::new(file.actor),
                key,
            };
            Some(tokio::spawn(sweeper::run(
                ledger.clone(),
                sweeper_key,
                shutdown_rx.clone(),
            )))
        } else {
            None
        };
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: options.listen,
            source,
        })?;
        let app = http::router(ledger.clone());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        });
        tracing::info!(%addr, "serving");
        Ok(Service {
            ledger,
            addr,
            shutdown,
            server,
            sweeper,
        })
    }

    /// Stops accepting connections, drains in-flight requests, stops the sweeper.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        if let Some(sweeper) = self.sweeper {
            let _ = sweeper.await;
        }
        let served = self.server.await;
        self.ledger.close().await;
        match served {
            Ok(result) => result.map_err(ServeError::Http),
            Err(join) => Err(ServeError::Http(std::io::Error::other(join.to_string()))),
        }
    }
}
