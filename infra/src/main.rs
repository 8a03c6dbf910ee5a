//! The `allot` binary.
fn main() {}
