//! Reserves and confirms through the batching client.
//!
//! ```sh
//! allot serve --data ./allot-data &
//! export ALLOT_KEY=./allot-data/keys/admin.key
//! allot pool declare --pool hall --capacity 100
//! allot actor keygen shop --role client --out shop.key
//! allot actor register shop --role client --key-file shop.key
//! cargo run -p allot-client --example reserve_confirm -- http://127.0.0.1:7878 shop.key hall
//! ```
//!
//! The key file is the JSON `allot actor keygen` writes (`actor`, `secret_key` in hex). Sixteen
//! reservations are made at once: the batcher sends them together, then their confirms.

use allot_client::{Batcher, BatcherConfig, Outcome};
use allot_domain::{Action, ActorId, PoolId};
use ed25519_dalek::SigningKey;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: reserve_confirm SERVER KEY_FILE POOL";
    let server = args.next().ok_or(usage)?;
    let key_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(args.next().ok_or(usage)?)?)?;
    let actor = key_file["actor"]
        .as_str()
        .ok_or("the key file has no actor")?
        .to_owned();
    let seed: [u8; 32] = hex::decode(key_file["secret_key"].as_str().ok_or("no secret_key")?)?
        .try_into()
        .map_err(|_| "secret_key must be 32 bytes")?;
    let pool = PoolId::new(args.next().ok_or(usage)?);

    let batcher = Batcher::new(
        &server,
        ActorId::new(actor),
        SigningKey::from_bytes(&seed),
        BatcherConfig::default(),
    )?;
    let mut tasks = Vec::new();
    for n in 0..16 {
        let batcher = batcher.clone();
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let reserve = Action::Reserve {
                resource: "seat".into(),
                requester: format!("guest-{n}"),
                duration_ms: 600_000,
                count: 1,
            };
            let reserved = batcher.submit(pool, reserve).await?;
            let Outcome::Reserved { reservation, .. } = reserved.outcome else {
                return Ok(format!("guest-{n}: {:?}", reserved.outcome));
            };
            let confirm = Action::ConfirmReservation {
                reservation: reservation.seq,
            };
            let confirmed = batcher.submit(reservation.pool.clone(), confirm).await?;
            Ok::<_, allot_client::SubmitError>(format!("guest-{n}: {:?}", confirmed.outcome))
        }));
    }
    for task in tasks {
        println!("{}", task.await??);
    }
    let stats = batcher.stats();
    println!(
        "{} commands in {} requests (mean batch {:.1})",
        stats.commands,
        stats.requests,
        stats.mean_batch()
    );
    Ok(())
}
