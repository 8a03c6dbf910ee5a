//! Lines for the `allot` binary's standard output.
//!
//! A reader that goes away (`allot bench … | head -1`) is not an error: the command finishes
//! its work (stores close, temporary directories go) and keeps its exit status. Any other
//! failure to write is reported once on stderr and makes the command fail ([`failed`]).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout; see the module doc for what happens when that fails.
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    // Stdout is line-buffered: the newline writes the line out (and reports its failure).
    let written = stdout
        .write_fmt(text)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(error) = written
        && error.kind() != ErrorKind::BrokenPipe
        && !FAILED.swap(true, Ordering::Relaxed)
    {
        eprintln!("error: cannot write to standard output: {error}");
    }
}

/// Whether a line could not be written for a reason other than a reader that went away.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// `println!` for command output, through [`line`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
