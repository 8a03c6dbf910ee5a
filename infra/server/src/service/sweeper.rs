//! The expiry sweeper: an ordinary client of the command path that expires Held reservations at
//! `expires_at`, as the `sweeper` actor, bounded per pass. Correctness never depends on it being
//! on time: confirm checks the window itself.

use std::time::Duration;

use allot_domain::{
    Action, ActorId, Command, IdempotencyToken, Outcome, RejectionCode, ReservationId, Role,
};
use ed25519_dalek::SigningKey;
use futures::future::join_all;
use tokio::sync::watch;

use crate::service::{Service, SubmitError};
use allot_client::sign_command;
use allot_domain::signing::params_digest;

/// Expiries submitted per pass.
pub const SWEEP_BATCH_MAX: usize = 1024;
/// Longest sleep when nothing is due, so clock jumps are noticed.
pub const SWEEP_IDLE_MS: u64 = 1_000;

/// The sweeper's identity and key.
#[derive(Clone)]
pub struct SweeperKey {
    pub actor: ActorId,
    pub key: SigningKey,
}

/// The deterministic token of the sweeper's expiry of `reservation`, so several sweepers cannot
/// expire one hold twice (the second replays the first's outcome).
pub fn sweep_token(reservation: &ReservationId) -> IdempotencyToken {
    IdempotencyToken::new(format!("sweep:{reservation}"))
}

async fn expire(
    service: &Service,
    sweeper: &SweeperKey,
    reservation: &ReservationId,
    token: IdempotencyToken,
) -> Result<Outcome, SubmitError> {
    let action = Action::ExpireReservation {
        reservation: reservation.seq,
    };
    let now = service.clock().now();
    let attestation = sign_command(
        &sweeper.key,
        &sweeper.actor,
        &reservation.pool,
        &action,
        &token,
        now,
    );
    let command = Command {
        pool: reservation.pool.clone(),
        actor: sweeper.actor.clone(),
        role: Role::Sweeper,
        attestation,
        token,
        digest: params_digest(&action),
        action,
        batch: None,
    };
    // The sweeper reads only the outcome: no receipt, so its appends keep no event bytes.
    service
        .submit_with(command, false)
        .await
        .map(|reply| reply.outcome)
}

/// Expires what is due now; returns how many holds it expired.
pub async fn sweep_once(service: &Service, sweeper: &SweeperKey) -> usize {
    let now = service.clock().now();
    let due = service.projections().expiry.due(now, SWEEP_BATCH_MAX);
    let attempts = due.iter().map(|(expires_at, reservation)| async move {
        let mut outcome = expire(service, sweeper, reservation, sweep_token(reservation)).await;
        // A premature attempt (another instance's clock ran ahead) is cached against the
        // deterministic token; retry under a token naming this attempt's time.
        if let Ok(Outcome::Rejected(rejection)) = &outcome
            && rejection.code() == RejectionCode::WindowNotElapsed
        {
            let token = IdempotencyToken::new(format!("sweep:{reservation}:{}", now.0));
            outcome = expire(service, sweeper, reservation, token).await;
        }
        match outcome {
            Ok(Outcome::Expired { .. }) => {
                let lag_ms = service.clock().now().0.saturating_sub(expires_at.0);
                service
                    .metrics()
                    .sweeper_lag_seconds
                    .observe(lag_ms as f64 / 1000.0);
                service.metrics().sweeper_expired.inc();
                1
            }
            Ok(other) => {
                tracing::debug!(%reservation, ?other, "sweeper expiry not applied");
                0
            }
            Err(error) => {
                tracing::warn!(%reservation, %error, "sweeper expiry failed; will retry");
                0
            }
        }
    });
    join_all(attempts).await.into_iter().sum()
}

/// Runs until `shutdown` turns true.
pub async fn run(service: Service, sweeper: SweeperKey, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let expired = sweep_once(&service, &sweeper).await;
        if expired >= SWEEP_BATCH_MAX {
            continue;
        }
        let now = service.clock().now();
        let wait_ms = service
            .projections()
            .expiry
            .earliest()
            .map_or(SWEEP_IDLE_MS, |at| {
                at.0.saturating_sub(now.0).min(SWEEP_IDLE_MS)
            });
        // A failed expiry stays due; back off a little instead of spinning on it.
        let wait_ms = if wait_ms == 0 && expired == 0 {
            50
        } else {
            wait_ms
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            _ = service.hold_placed() => {}
            _ = shutdown.changed() => {}
        }
    }
}
