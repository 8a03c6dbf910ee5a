//! The client subcommands: pool administration, reserve, confirm, cancel, expire and show. Pool
//! commands go through `allot-client`'s batcher (a batch of one, resent with the same token when
//! no answer comes); an `https://` server, which the batcher does not speak, gets the single
//! signed request. Reads are one signed request.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_client::{Answer, Batcher, BatcherConfig, BatcherError, Client};
use allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT;
use allot_domain::{Action, ActorId, IdempotencyToken, PoolId, ReservationId, Timestamp};
use allot_server::clock::{Clock, SystemClock};
use allot_server::identity::KeyFile;
use allot_server::out;

/// Who signs, where to, and with which idempotency key.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The service's base URL.
    #[arg(long, env = "ALLOT_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// The signing key file of the acting actor (created by `allot serve` or `allot actor keygen`).
    #[arg(long, env = "ALLOT_KEY")]
    key: PathBuf,
    /// Idempotency key; a fresh random one if omitted. Reuse it to retry safely.
    #[arg(long)]
    token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PoolCommand {
    /// Declare a pool; its id is generated unless given.
    Declare {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        capacity: u64,
        /// Cutoff, in milliseconds since the epoch.
        #[arg(long, conflicts_with = "closes_in_ms")]
        closes_at: Option<u64>,
        /// Cutoff, in milliseconds from now.
        #[arg(long)]
        closes_in_ms: Option<u64>,
        /// Named units (a seat map), comma-separated.
        #[arg(long, value_delimiter = ',')]
        units: Vec<String>,
        #[arg(long, default_value_t = IDEMPOTENCY_WINDOW_MS_DEFAULT)]
        idempotency_window_ms: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Adjust {
        pool: String,
        #[arg(long)]
        capacity: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Close {
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReserveArgs {
    pool: String,
    #[arg(long)]
    resource: String,
    #[arg(long)]
    requester: String,
    /// Hold duration in milliseconds.
    #[arg(long, default_value_t = 600_000)]
    duration_ms: u64,
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReservationArgs {
    reservation: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    id: String,
    /// The service's base URL.
    #[arg(long, env = "ALLOT_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// The signing key file of the reading actor (reads are signed too).
    #[arg(long, env = "ALLOT_KEY")]
    key: PathBuf,
}

/// The client of `args` and the idempotency key it sends.
pub fn client(args: &ClientArgs) -> Result<(Client, String), String> {
    let (file, key) = KeyFile::read(&args.key).map_err(|e| e.to_string())?;
    let token = args.token.clone().unwrap_or_else(random_token);
    Ok((
        Client::new(args.server.clone(), ActorId::new(file.actor), key),
        token,
    ))
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Prints the answer's body; exit 2 for an error answer.
pub fn print_answer(answer: &Answer) -> ExitCode {
    let text = serde_json::to_string_pretty(&answer.body).unwrap_or_default();
    if answer.replayed {
        eprintln!("(replayed: this token's recorded outcome)");
    }
    out!("{text}");
    if answer.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

async fn send(args: &ClientArgs, pool: &PoolId, action: Action) -> Result<ExitCode, String> {
    let (file, key) = KeyFile::read(&args.key).map_err(|e| e.to_string())?;
    let token = args.token.clone().unwrap_or_else(random_token);
    // One command: nothing to wait for before sending it.
    let config = BatcherConfig {
        linger: std::time::Duration::ZERO,
        // What the command prints is the single route's answer, receipt included.
        receipts: true,
        ..BatcherConfig::default()
    };
    let batcher = match Batcher::new(&args.server, ActorId::new(file.actor), key, config) {
        Ok(batcher) => batcher,
        Err(BatcherError::Server(_)) => return send_single(args, pool, action, &token).await,
        Err(error) => return Err(error.to_string()),
    };
    let answer = batcher
        .submit_with_token(pool.clone(), action, IdempotencyToken::new(token.clone()))
        .await;
    eprintln!("idempotency key: {token}");
    let submitted = answer.map_err(|e| e.to_string())?;
    if submitted.replayed {
        eprintln!("(replayed: this token's recorded outcome)");
    }
    let text = serde_json::to_string_pretty(&submitted.to_json()).unwrap_or_default();
    out!("{text}");
    Ok(if submitted.outcome.is_rejected() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `action` as one signed request to its single-command route.
async fn send_single(
    args: &ClientArgs,
    pool: &PoolId,
    action: Action,
    token: &str,
) -> Result<ExitCode, String> {
    let (file, key) = KeyFile::read(&args.key).map_err(|e| e.to_string())?;
    let client = Client::new(args.server.clone(), ActorId::new(file.actor), key);
    let answer = client
        .send(pool, &action, token)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("idempotency key: {token}");
    Ok(print_answer(&answer))
}

fn parse_reservation(text: &str) -> Result<ReservationId, String> {
    ReservationId::parse(text).ok_or_else(|| format!("{text}: a reservation id is `pool:seq`"))
}

pub async fn pool(command: PoolCommand) -> Result<ExitCode, String> {
    match command {
        PoolCommand::Declare {
            pool,
            capacity,
            closes_at,
            closes_in_ms,
            units,
            idempotency_window_ms,
            client,
        } => {
            let pool =
                PoolId::new(pool.unwrap_or_else(|| format!("pool-{}", &random_token()[..12])));
            let closes_at = closes_at
                .or_else(|| closes_in_ms.map(|ms| SystemClock.now().0 + ms))
                .map(Timestamp);
            let action = Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            };
            send(&client, &pool, action).await
        }
        PoolCommand::Adjust {
            pool,
            capacity,
            client,
        } => {
            send(
                &client,
                &PoolId::new(pool),
                Action::AdjustCapacity { capacity },
            )
            .await
        }
        PoolCommand::Close { pool, client } => {
            send(&client, &PoolId::new(pool), Action::ClosePool).await
        }
    }
}

pub async fn reserve(args: ReserveArgs) -> Result<ExitCode, String> {
    let action = Action::Reserve {
        resource: args.resource,
        requester: args.requester,
        duration_ms: args.duration_ms,
        count: args.count,
    };
    send(&args.client, &PoolId::new(args.pool), action).await
}

async fn reservation_command(
    args: ReservationArgs,
    action: fn(u64) -> Action,
) -> Result<ExitCode, String> {
    let id = parse_reservation(&args.reservation)?;
    send(&args.client, &id.pool, action(id.seq)).await
}

pub async fn confirm(args: ReservationArgs) -> Result<ExitCode, String> {
    reservation_command(args, |reservation| Action::ConfirmReservation {
        reservation,
    })
    .await
}

pub async fn cancel(args: ReservationArgs) -> Result<ExitCode, String> {
    reservation_command(args, |reservation| Action::CancelReservation {
        reservation,
    })
    .await
}

pub async fn expire(args: ReservationArgs) -> Result<ExitCode, String> {
    reservation_command(args, |reservation| Action::ExpireReservation {
        reservation,
    })
    .await
}

pub async fn show(args: ShowArgs) -> Result<ExitCode, String> {
    let (file, key) = KeyFile::read(&args.key).map_err(|e| e.to_string())?;
    let reader = Client::new(args.server, ActorId::new(file.actor), key);
    let answer = match ReservationId::parse(&args.id) {
        Some(reservation) => reader.reservation(&reservation).await,
        None => reader.pool(&PoolId::new(args.id)).await,
    }
    .map_err(|e| e.to_string())?;
    Ok(print_answer(&answer))
}
