//! The `allot` binary: logging, the runtime, and the command line (`cli`). Nothing else lives
//! here; the service is `allot-server`, the tools are `allot-tools`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the command path allocates and frees small objects across
/// threads, where glibc's free-list consolidation cost a fifth of the CPU (BENCHMARKS.md,
/// "Measured and not kept"). Wrapped to count live heap bytes for `allot bench memory`; the
/// count is off otherwise (one relaxed load per allocation).
#[global_allocator]
static ALLOCATOR: allot_tools::bench::heap_bytes::CountingAllocator<mimalloc::MiMalloc> =
    allot_tools::bench::heap_bytes::CountingAllocator(mimalloc::MiMalloc);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ALLOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli::Cli::parse())) {
        // Output that could not be written (other than to a reader that left) is a failure.
        Ok(_) if allot_server::stdout::failed() => ExitCode::FAILURE,
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
