//! The `allot` command line: argument types and one file per subcommand. Each subcommand's
//! `run` opens what it needs, calls into the service or a tool, and prints.
//! Must not: hold a rule the service or the tools need (they never import the CLI).

mod actor;
mod audit;
mod bench;
mod client;
mod demo;
mod rebuild;
mod receipts;
mod repair;
mod serve;
mod source;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// allot: a reservation ledger that never oversells and never loses a slot.
#[derive(Debug, Parser)]
#[command(name = "allot", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (embedded store by default).
    Serve(serve::ServeArgs),
    /// The course-registration add/drop rush, end to end, on the embedded store.
    Demo(demo::DemoArgs),
    /// Pool administration (admin key).
    Pool {
        #[command(subcommand)]
        command: client::PoolCommand,
    },
    /// Reserve units of a pool.
    Reserve(client::ReserveArgs),
    /// Confirm a held reservation.
    Confirm(client::ReservationArgs),
    /// Cancel a held reservation, returning its slot.
    Cancel(client::ReservationArgs),
    /// Expire a lapsed hold (sweeper or admin key).
    Expire(client::ReservationArgs),
    /// Show a reservation (`pool:seq`) or a pool.
    Show(client::ShowArgs),
    /// Verify the log's integrity and the seed's guarantees from the log alone, read-only;
    /// exits 1 on a violation, 3 when acknowledged data is missing or damaged.
    Audit(audit::AuditArgs),
    /// Remove a torn write of never-acknowledged data (keeping a copy) or a damaged index
    /// snapshot; says what it will do first.
    Repair(repair::RepairArgs),
    /// Check one receipt offline: exit 0 if it verifies, 1 with the reason if not.
    VerifyReceipt(receipts::VerifyReceiptArgs),
    /// Rebuild every projection from the log and write a checkpoint the service starts from.
    Rebuild(rebuild::RebuildArgs),
    /// Performance scenarios (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Actor keys and registrations.
    Actor {
        #[command(subcommand)]
        command: actor::ActorCommand,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Pool { command } => client::pool(command).await,
        Command::Reserve(args) => client::reserve(args).await,
        Command::Confirm(args) => client::confirm(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Expire(args) => client::expire(args).await,
        Command::Show(args) => client::show(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Repair(args) => repair::run(args).await,
        Command::VerifyReceipt(args) => receipts::verify_receipt(args),
        Command::Rebuild(args) => rebuild::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Actor { command } => actor::run(command).await,
    }
}
