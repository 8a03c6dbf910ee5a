//! `allot actor`: key files, and registrations signed by an admin.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_domain::{ActorId, Role};
use allot_server::identity::KeyFile;
use allot_server::out;

use super::client::{ClientArgs, client, print_answer};

#[derive(Debug, clap::Subcommand)]
pub enum ActorCommand {
    /// Generate a key file (mode 0600) for a new actor; prints its public key.
    Keygen {
        actor: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Register an actor's public key with a role (admin key).
    Register {
        actor: String,
        #[arg(long)]
        role: String,
        /// Hex public key, or read it from the actor's key file with --key-file.
        #[arg(long, required_unless_present = "key_file")]
        public_key: Option<String>,
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke an actor's key at once (admin key).
    Revoke {
        actor: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("{text}: role is admin, client, sweeper, auditor or server"))
}

pub async fn run(command: ActorCommand) -> Result<ExitCode, String> {
    match command {
        ActorCommand::Keygen { actor, role, out } => {
            let (file, key) = KeyFile::generate(&actor, parse_role(&role)?);
            file.write_new(&out).map_err(|e| e.to_string())?;
            out!("{}", hex::encode(key.verifying_key().to_bytes()));
            eprintln!("wrote {} (mode 0600)", out.display());
            Ok(ExitCode::SUCCESS)
        }
        ActorCommand::Register {
            actor,
            role,
            public_key,
            key_file,
            client: args,
        } => {
            let public_key = match (public_key, key_file) {
                (Some(hex_key), _) => hex::decode(hex_key)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or("public key must be 32 bytes of hex")?,
                (None, Some(path)) => {
                    let (_, key) = KeyFile::read(&path).map_err(|e| e.to_string())?;
                    key.verifying_key().to_bytes()
                }
                (None, None) => return Err("give --public-key or --key-file".to_owned()),
            };
            let (admin, token) = client(&args)?;
            let answer = admin
                .register_actor(&ActorId::new(actor), parse_role(&role)?, public_key, &token)
                .await
                .map_err(|e| e.to_string())?;
            Ok(print_answer(&answer))
        }
        ActorCommand::Revoke {
            actor,
            client: args,
        } => {
            let (admin, token) = client(&args)?;
            let answer = admin
                .revoke_actor(&ActorId::new(actor), &token)
                .await
                .map_err(|e| e.to_string())?;
            Ok(print_answer(&answer))
        }
    }
}
