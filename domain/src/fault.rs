//! Test-only bug switches (feature `fault-injection`): the vacuity guard. A property or the
//! simulator must fail when one is on, proving it can catch the bug it names. Thread-local, so
//! parallel tests do not see each other's switch; off unless a test turns it on.

use std::cell::Cell;

/// A deliberate bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// cancel_reservation marks the hold Released but does not return its slot.
    CancelForgetsRelease,
    /// expire_reservation marks the hold Expired but does not return its slot.
    ExpireForgetsRelease,
}

thread_local! {
    static ACTIVE: Cell<Option<Fault>> = const { Cell::new(None) };
}

/// Turns `fault` on (or all off with `None`) for this thread.
pub fn set(fault: Option<Fault>) {
    ACTIVE.with(|active| active.set(fault));
}

pub(crate) fn is_on(fault: Fault) -> bool {
    ACTIVE.with(|active| active.get() == Some(fault))
}
