//! The composition root of `allot serve`: the store, the service, the sweeper, the HTTP API and
//! the metrics listener (each behind the edge, `http::edge`) in one process; the first keys on an
//! empty store; graceful shutdown.
//! Must not: hold any rule of its own beyond wiring the rooms together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use allot_client::sign_actor_change;
use allot_domain::{ActorChange, ActorEvent, ActorId, IdempotencyToken, Role};
use allot_projections::Projections;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::http;
use crate::http::edge::{self, EdgeLimits};
use crate::identity::{KeyFile, KeyFileError};
use crate::metrics::Metrics;
use crate::service::sweeper::{self, SweeperKey};
use crate::service::{LoadError, Service, SubmitError};
use crate::store::EventStore;

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
    service: &Service,
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
    let token = IdempotencyToken::new(format!("bootstrap:{actor}"));
    let now = service.clock().now();
    let attestation = sign_actor_change(&key, &actor_id, &actor_id, &change, &token, now);
    let event = ActorEvent {
        actor: actor_id.clone(),
        change,
        by: actor_id,
        token,
        attestation,
        at: now,
    };
    service
        .record_actor_event(event)
        .await
        .map_err(ServeError::Bootstrap)?;
    tracing::info!(actor, role = %role, key = %path.display(), "created first key (mode 0600)");
    Ok(())
}

/// On an empty store, creates the admin and sweeper keys in `keys_dir` and registers them.
/// Returns true if it did.
pub async fn bootstrap_actors(service: &Service, keys_dir: &Path) -> Result<bool, ServeError> {
    if !service.actors().is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(keys_dir).map_err(|source| ServeError::KeyDir {
        path: keys_dir.to_owned(),
        source,
    })?;
    register_self(service, FIRST_ADMIN, Role::Admin, keys_dir).await?;
    register_self(service, FIRST_SWEEPER, Role::Sweeper, keys_dir).await?;
    Ok(true)
}

/// A running service.
pub struct Server {
    pub service: Service,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    metrics_server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

/// The metrics listener's address unless told otherwise: loopback, Prometheus' exporter port.
pub const METRICS_LISTEN: &str = "127.0.0.1:9464";

/// How to run the service.
pub struct ServeOptions {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where `/metrics` listens (see [`METRICS_LISTEN`]).
    pub metrics_listen: SocketAddr,
    pub keys_dir: PathBuf,
    /// Run the expiry sweeper in this process (with the key at `keys_dir/sweeper.key`).
    pub sweeper: bool,
    /// The limits of both listeners.
    pub edge: EdgeLimits,
}

/// The background verifier: one pass over the whole log after start-up, which start-up itself
/// trusts beyond what it relies on (the snapshot, the tail). Damage it finds is logged with its
/// file, offset and first position, and turns `/healthz` unhealthy; reads of a damaged record
/// already fail on their own.
async fn verify_log(store: Arc<dyn EventStore>, metrics: Arc<Metrics>) {
    let started = std::time::Instant::now();
    match store.verify_log().await {
        Ok(Some(events)) => {
            metrics.log_verified_events.set(events);
            tracing::info!(
                events,
                seconds = started.elapsed().as_secs_f64(),
                "background log verification passed"
            );
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "background log verification found damage");
            metrics.set_log_damage(error.to_string());
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listen_error = |source| ServeError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    Ok((listener, bound))
}

impl Server {
    /// Opens the service over `store`, bootstraps keys on first start, starts the sweeper and
    /// serves the API on `options.listen` and `/metrics` on `options.metrics_listen`.
    pub async fn start(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        projections: Arc<Projections>,
        options: ServeOptions,
    ) -> Result<Server, ServeError> {
        let metrics = Arc::new(Metrics::new());
        let shared = store.shared_with_other_writers();
        tokio::spawn(verify_log(Arc::clone(&store), Arc::clone(&metrics)));
        let service = Service::open(store, clock, projections, metrics).await?;
        if shared {
            // Other instances write to this store: follow it so their writes (and actor
            // revocations) reach this instance at once.
            service
                .follow_store()
                .await
                .map_err(|error| ServeError::Load(LoadError::Store(error)))?;
        }
        if bootstrap_actors(&service, &options.keys_dir).await? {
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
                service.clone(),
                sweeper_key,
                shutdown_rx.clone(),
            )))
        } else {
            None
        };
        let (listener, addr) = bind(options.listen).await?;
        let (metrics_listener, metrics_addr) = bind(options.metrics_listen).await?;
        let app = http::router_with_body_limit(service.clone(), options.edge.body_bytes_max);
        let server = tokio::spawn(edge::serve(
            listener,
            app,
            options.edge,
            shutdown_rx.clone(),
        ));
        let metrics_app = http::metrics_router(Arc::clone(service.metrics()));
        let metrics_server = tokio::spawn(edge::serve(
            metrics_listener,
            metrics_app,
            options.edge,
            shutdown_rx,
        ));
        tracing::info!(%addr, %metrics_addr, "serving");
        Ok(Server {
            service,
            addr,
            metrics_addr,
            shutdown,
            server,
            metrics_server,
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
        let metrics_served = self.metrics_server.await;
        self.service.close().await;
        for served in [served, metrics_served] {
            match served {
                Ok(result) => result.map_err(ServeError::Http)?,
                Err(join) => {
                    return Err(ServeError::Http(std::io::Error::other(join.to_string())));
                }
            }
        }
        Ok(())
    }
}
