//! The pool aggregate: the reservation lifecycle as pure functions.
//!
//! Owns: the types of the seed's contract (pools, reservations, tokens, actors), commands and
//! events, `decide` (command + state + now → event or rejection) and `evolve` (state + event →
//! state), the rejection taxonomy and its precedence, the stored event encoding, the canonical
//! bytes actors sign, and where events are recorded (stream names, event ids).
//!
//! Must not: read a clock, draw randomness, perform I/O, or be async. Time, the parameters
//! digest and the verified actor arrive as arguments, so replay reproduces live state exactly.
//!
//! Layout:
//! - `ids`: identifiers and scalars (`PoolId`, `ReservationId`, `Timestamp`, ...).
//! - `command`: `Command`, `Action`, limits and validation.
//! - `event`: `Event`, `Change`, `Outcome`, `ReservationState`.
//! - `rejection`: `Rejection` and its stable `RejectionCode`.
//! - `pool`: the `Pool` aggregate, `decide`, `evolve`, the token cache.
//! - `token_index`: tokens by (actor, token) in recording order, grown and forgotten a little
//!   per event.
//! - `actor`: roles and the actor registry folded from the `actors` stream.
//! - `roles`: the one role table (which role may do and see what).
//! - `signing`: the canonical encoding actors sign, its parameters digest and targets, and the
//!   parameters of actor changes.
//! - `streams`: stream names (`actors`, `pool-<id>`) and the deterministic event ids appends
//!   carry.
//! - `codec`: the versioned stored encoding (bincode 2).
//! - `batch`: the canonical form of a signed submission batch and the membership proof each of
//!   its events keeps.
//! - `integrity`: event leaves, batch Merkle roots and proofs, the hash chain and the seal a
//!   server signs per group commit.

pub mod actor;
pub mod batch;
pub mod codec;
pub mod command;
pub mod event;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod ids;
pub mod integrity;
pub mod pool;
pub mod rejection;
pub mod roles;
pub mod signing;
pub mod streams;
pub mod token_index;

pub use actor::{ActorChange, ActorEvent, ActorKey, ActorRegistry, Role};
pub use command::{Action, ActionKind, Command, ParamValue};
pub use event::{Change, Event, OnBehalfOf, Outcome, ReservationState};
pub use ids::{
    ActorId, Attestation, IdempotencyToken, ParamsDigest, PoolId, ReservationId, Timestamp,
};
pub use pool::{
    Decision, EvolveError, Hold, Pool, PoolStatus, ReservationStatus, TokenCache, TokenRecord,
    decide, evolve,
};
pub use rejection::{Rejection, RejectionCode};
pub use roles::Permission;
pub use token_index::TokenIndex;
