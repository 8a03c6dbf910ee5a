//! Read models folded from pool events.
//!
//! Owns: the binding (reservation → pool, slot_released), pool counts, the token cache view and the
//! expiry index, each a pure fold with one `apply(&event)`. Live service and replay call the same
//! apply code, so a rebuilt projection equals the live one.
//!
//! Must not: read clocks, perform I/O, or decide commands (that is `allot-domain`).
