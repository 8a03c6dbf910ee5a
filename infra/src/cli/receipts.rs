//! `allot verify-receipt` (one receipt, offline) and `allot audit --receipts` (receipts against
//! an embedded log, read-only).

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allot_client::receipt::{Receipt, verify};
use allot_server::out;
use allot_server::store::StoreError;
use allot_server::store::embedded::EmbeddedStore;
use allot_tools::receipts;
use ed25519_dalek::VerifyingKey;

use super::audit::EXIT_DAMAGED;
use super::source::{existing_dir, is_connection_string};

/// Largest receipt file `verify-receipt` reads, in bytes (one receipt is far smaller).
const RECEIPT_FILE_BYTES_MAX: u64 = receipts::RECEIPT_LINE_BYTES_MAX as u64;

#[derive(Debug, clap::Args)]
pub struct VerifyReceiptArgs {
    /// A file holding one receipt (the `receipt` member of a command's answer), as JSON.
    file: PathBuf,
    /// The server key the receipt must be signed with (64 hex digits); without it, the key the
    /// receipt names is taken as given.
    #[arg(long)]
    key: Option<String>,
}

fn pinned_key(hex_key: &str) -> Result<VerifyingKey, String> {
    hex::decode(hex_key)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or_else(|| "--key must be an ed25519 public key, 64 hex digits".to_owned())
}

fn read_receipt(path: &Path) -> Result<Receipt, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > RECEIPT_FILE_BYTES_MAX {
        return Err(format!(
            "{}: {size} bytes is more than a receipt ({RECEIPT_FILE_BYTES_MAX} at most)",
            path.display()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: not a receipt: {e}", path.display()))
}

/// Exit 0 when the receipt verifies, 1 with the reason when it does not.
pub fn verify_receipt(args: VerifyReceiptArgs) -> Result<ExitCode, String> {
    let pinned = args.key.as_deref().map(pinned_key).transpose()?;
    let receipt = read_receipt(&args.file)?;
    match verify(&receipt, pinned.as_ref()) {
        Ok(()) => {
            out!(
                "valid: position {} ({}@{}), event {} of {} in the batch from position {}, \
                 signed by {} (key {}{})",
                receipt.position,
                receipt.stream,
                receipt.version,
                receipt.index,
                receipt.count,
                receipt.seal.first_position,
                receipt.server,
                hex::encode(receipt.server_key),
                if pinned.is_some() { ", pinned" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            out!("invalid: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `allot audit SOURCE --receipts FILE`: exit 0 when every receipt verifies and its event is in
/// the log; 3 (FAIL) when some receipt's event is not in the log, or the log is damaged; 1 when
/// every event is there but some receipt does not hold.
pub async fn audit(source: &str, file: &Path, json: bool) -> Result<ExitCode, String> {
    if is_connection_string(source) {
        return Err(
            "--receipts checks an embedded data directory: a KurrentDB store seals no batches, so \
             it gives no receipts"
                .to_owned(),
        );
    }
    let store = match EmbeddedStore::open_read_only(existing_dir(source)?).await {
        Ok(store) => store,
        Err(StoreError::Damaged(damage)) => {
            if json {
                let reason = damage.to_string();
                out!(
                    "{}",
                    serde_json::json!({ "result": "FAIL", "damaged": reason })
                );
            } else {
                out!("FAIL: {damage}");
            }
            return Ok(ExitCode::from(EXIT_DAMAGED));
        }
        Err(e) => return Err(e.to_string()),
    };
    let reader = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let report = receipts::check(&store, BufReader::new(reader))
        .await
        .map_err(|e| e.to_string())?;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        out!("{report}");
    }
    Ok(if report.missing > 0 {
        ExitCode::from(EXIT_DAMAGED)
    } else if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
