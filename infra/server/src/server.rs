//! The composition root of `allot serve`: the store, the service, the sweeper, the HTTP API and
//! the metrics listener (each behind the edge, `http::edge`) in one process; the first keys on an
//! empty store; the instance's server key; graceful shutdown.
//! Must not: hold any rule of its own beyond wiring the rooms together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use allot_client::sign_actor_change;
use allot_domain::command::is_valid_actor_id;
use allot_domain::{ActorChange, ActorEvent, ActorId, IdempotencyToken, Permission, Role};
use allot_projections::Projections;
use ed25519_dalek::SigningKey;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::http;
use crate::http::edge::{self, EdgeLimits};
use crate::identity::{KeyFile, KeyFileError, SealSigner};
use crate::metrics::Metrics;
use crate::service::sweeper::{self, SweeperKey};
use crate::service::{LoadError, Service, SubmitError};
use crate::store::EventStore;

/// The actor names of the keys created at first start.
pub const FIRST_ADMIN: &str = "admin";
pub const FIRST_SWEEPER: &str = "sweeper";
/// The instance's server key in its keys directory, unless `ServeOptions::server_key` says
/// otherwise.
pub const SERVER_KEY_FILE: &str = "server.key";
/// A server key's actor id: this prefix and 16 random hex digits, drawn when the key is made.
pub const SERVER_ACTOR_PREFIX: &str = "server-";

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
    #[error("server key {path} has role {role}; a server key has role server")]
    ServerKeyRole { path: PathBuf, role: Role },
    #[error("server key {path} names {actor:?}, which is not an actor id")]
    ServerKeyActor { path: PathBuf, actor: String },
    #[error(
        "server key {path} is not the key in force for {actor} (it was revoked or replaced); \
         move the file away and start again to make a new one"
    )]
    ServerKeyNotInForce { path: PathBuf, actor: ActorId },
    #[error(
        "server key {path} ({actor}) is not registered, and the admin key {admin} cannot \
         register it: {reason}. Register it with `allot actor register {actor} --role server \
         --key-file {path}`, then start again"
    )]
    ServerKeyUnregistered {
        path: PathBuf,
        actor: ActorId,
        admin: PathBuf,
        reason: AdminKeyUnusable,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Why the admin key beside the server key cannot register it.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyUnusable {
    #[error(transparent)]
    File(#[from] KeyFileError),
    #[error("it is not the key in force for {0}")]
    NotInForce(ActorId),
    #[error("its role {0} may not register actors")]
    MayNotManageActors(Role),
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

/// The instance's server key: read from `path`, or made there at the instance's first start,
/// on an empty data directory or an existing one. A key not yet registered is registered with
/// role `server`, signed by the admin key in `keys_dir` as any registration is signed by an
/// admin. Returns the signer and whether the key was made now.
pub async fn server_key(
    service: &Service,
    path: &Path,
    keys_dir: &Path,
) -> Result<(SealSigner, bool), ServeError> {
    let made = !path.exists();
    let (file, key) = if made {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ServeError::KeyDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut suffix = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut suffix);
        let actor = format!("{SERVER_ACTOR_PREFIX}{}", hex::encode(suffix));
        let (file, key) = KeyFile::generate(&actor, Role::Server);
        file.write_new(path)?;
        tracing::info!(
            actor,
            key = %path.display(),
            "made this instance's server key (mode 0600)"
        );
        (file, key)
    } else {
        KeyFile::read(path)?
    };
    if file.role != Role::Server {
        return Err(ServeError::ServerKeyRole {
            path: path.to_owned(),
            role: file.role,
        });
    }
    if !is_valid_actor_id(&file.actor) {
        return Err(ServeError::ServerKeyActor {
            path: path.to_owned(),
            actor: file.actor,
        });
    }
    let actor = ActorId::new(file.actor);
    let public_key = key.verifying_key().to_bytes();
    let actors = service.actors();
    match actors.current(&actor) {
        Some(known) if known.public_key == public_key && known.role == Role::Server => {}
        None if !actors.ever_registered(&actor) => {
            register_server(service, &actor, public_key, keys_dir)
                .await
                .map_err(|failure| match failure {
                    RegisterFailure::Admin { admin, reason } => ServeError::ServerKeyUnregistered {
                        path: path.to_owned(),
                        actor: actor.clone(),
                        admin,
                        reason,
                    },
                    RegisterFailure::Submit(error) => ServeError::Bootstrap(error),
                })?;
            tracing::info!(%actor, "registered this instance's server key");
        }
        // Revoked or replaced by an admin: never put back by the instance itself.
        _ => {
            return Err(ServeError::ServerKeyNotInForce {
                path: path.to_owned(),
                actor,
            });
        }
    }
    Ok((
        SealSigner::new(actor, key, Arc::clone(service.metrics())),
        made,
    ))
}

enum RegisterFailure {
    Admin {
        admin: PathBuf,
        reason: AdminKeyUnusable,
    },
    Submit(SubmitError),
}

/// Registers `actor` with role `server`, signed by the admin key in `keys_dir`.
async fn register_server(
    service: &Service,
    actor: &ActorId,
    public_key: [u8; 32],
    keys_dir: &Path,
) -> Result<(), RegisterFailure> {
    let admin_path = key_path(keys_dir, FIRST_ADMIN);
    let unusable = |reason: AdminKeyUnusable| RegisterFailure::Admin {
        admin: admin_path.clone(),
        reason,
    };
    let (file, admin_key): (KeyFile, SigningKey) =
        KeyFile::read(&admin_path).map_err(|error| unusable(error.into()))?;
    let admin = ActorId::new(file.actor);
    match service.actors().current(&admin) {
        Some(known) if known.public_key != admin_key.verifying_key().to_bytes() => {
            return Err(unusable(AdminKeyUnusable::NotInForce(admin)));
        }
        Some(known) if !known.role.allows(Permission::ManageActors) => {
            return Err(unusable(AdminKeyUnusable::MayNotManageActors(known.role)));
        }
        Some(_) => {}
        None => return Err(unusable(AdminKeyUnusable::NotInForce(admin))),
    }
    let change = ActorChange::Registered {
        role: Role::Server,
        public_key,
    };
    let token = IdempotencyToken::new(format!("register-server:{actor}"));
    let now = service.clock().now();
    let attestation = sign_actor_change(&admin_key, &admin, actor, &change, &token, now);
    let event = ActorEvent {
        actor: actor.clone(),
        change,
        by: admin,
        token,
        attestation,
        at: now,
    };
    service
        .record_actor_event(event)
        .await
        .map(|_| ())
        .map_err(RegisterFailure::Submit)
}

/// A running service.
pub struct Server {
    pub service: Service,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    /// The instance's server key, which signs its receipts and head; `None` only on a store
    /// that seals nothing, when the key could not be registered.
    pub seal_signer: Option<Arc<SealSigner>>,
    /// Whether the server key was made at this start.
    pub seal_signer_made: bool,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    metrics_server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
    /// The background log verifier; stopped at shutdown so it lets go of the store.
    verifier: tokio::task::JoinHandle<()>,
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
    /// The instance's server key (default: `keys_dir/server.key`, [`SERVER_KEY_FILE`]).
    /// Instances that share a keys directory each need their own.
    pub server_key: Option<PathBuf>,
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
        let verifier = tokio::spawn(verify_log(Arc::clone(&store), Arc::clone(&metrics)));
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
        let server_key_path = options
            .server_key
            .clone()
            .unwrap_or_else(|| options.keys_dir.join(SERVER_KEY_FILE));
        let seals = service.store().seals_group_commits();
        let (seal_signer, seal_signer_made) = match server_key(
            &service,
            &server_key_path,
            &options.keys_dir,
        )
        .await
        {
            Ok((signer, made)) => {
                service.enable_receipts();
                (Some(Arc::new(signer)), made)
            }
            // A store that seals nothing gives nothing to sign: no reason to refuse.
            Err(error @ ServeError::ServerKeyUnregistered { .. }) if !seals => {
                tracing::warn!(%error, "serving without a server key (this store seals no batches)");
                (None, false)
            }
            Err(error) => return Err(error),
        };
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
        let app = http::router_with_body_limit(
            service.clone(),
            options.edge.body_bytes_max,
            options.edge.batch_body_bytes_max,
            seal_signer.clone(),
        );
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
            verifier,
            service,
            addr,
            metrics_addr,
            seal_signer,
            seal_signer_made,
            shutdown,
            server,
            metrics_server,
            sweeper,
        })
    }

    /// Stops accepting connections, drains in-flight requests, stops the sweeper.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        // A pass still running is left to finish on its own thread, without the store.
        self.verifier.abort();
        let _ = self.verifier.await;
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
