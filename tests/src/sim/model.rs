//! The reference model: every command the simulated clients sent, and what they were told.
//!
//! It judges each answer against what the clients know for certain, never against a guess of
//! the service's state:
//! - an answer names the action's own target (a confirm of 3 answers about 3);
//! - a token acknowledged within its window replays the same outcome (invariant 5), and the
//!   same token with other parameters is a `token-collision`;
//! - two different commands never get the same reservation, and a reservation takes at most
//!   one transition (confirm, cancel or expire: terminal absorption);
//! - no new hold on a pool acknowledged closed, or at/after its cutoff;
//! - a confirm sent when the clock had already reached `expires_at` is never `Confirmed`, and
//!   an expiry answered before the clock ever reached `expires_at` is never `Expired`
//!   (invariant 4, checked from the client's side);
//! - every acknowledged outcome is in the log (checked by the driver against the mirror).

use std::collections::BTreeMap;

use allot_domain::{
    Action, ActorId, IdempotencyToken, Outcome, PoolId, RejectionCode, ReservationId, Timestamp,
};
use allot_server::service::{Reply, SubmitError};

/// Why a command was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new command with a token of its own, retried with that token until it is answered.
    Fresh,
    /// The same command again under the token of an acknowledged one: must replay it.
    Reuse { of: usize },
    /// Other parameters under the token of an acknowledged one: must collide.
    Collide { with: usize },
}

/// Where a command stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Never sent, or every attempt failed or lost its answer: it may or may not be recorded.
    Unresolved,
    /// Answered with a recorded outcome.
    Acknowledged(Reply),
    /// Answered with a rejection that is not recorded (unknown pool, token collision).
    Refused(RejectionCode),
    /// A reuse or collision probe whose attempt failed; not retried.
    Abandoned,
}

/// One command a client means to get through.
#[derive(Debug, Clone)]
pub struct Intent {
    pub actor: ActorId,
    pub pool: PoolId,
    pub token: IdempotencyToken,
    pub action: Action,
    pub purpose: Purpose,
    pub attempts: u32,
    /// The earliest clock reading of any attempt: a lower bound of when it was recorded.
    pub first_clock: Option<Timestamp>,
    pub status: Status,
    /// Acknowledged but not yet looked up in the log.
    pub unverified: bool,
    /// Answers that were decided afresh (not replayed).
    pub fresh_answers: u32,
    /// An attempt failed or went unanswered, so it may have been recorded even if another
    /// attempt (a copy in flight on a stale instance) was refused.
    pub maybe_recorded: bool,
}

impl Intent {
    pub fn reply(&self) -> Option<&Reply> {
        match &self.status {
            Status::Acknowledged(reply) => Some(reply),
            _ => None,
        }
    }
}

/// What the clients know about a reservation they were given.
#[derive(Debug, Clone)]
pub struct Known {
    pub id: ReservationId,
    pub expires_at: Timestamp,
    /// The command that got it.
    pub intent: usize,
}

/// Every intent and everything acknowledged.
#[derive(Debug, Default)]
pub struct Model {
    pub intents: Vec<Intent>,
    /// Reservations given out, in the order they were acknowledged.
    pub known: Vec<Known>,
    given: BTreeMap<ReservationId, usize>,
    /// The command whose transition (confirm, cancel, expire) of a reservation was acknowledged.
    transitions: BTreeMap<ReservationId, (usize, Outcome)>,
    /// Idempotency window of each pool, as declared.
    pub windows: BTreeMap<PoolId, u64>,
    /// Reservation cutoff of each pool that has one, as declared.
    pub cutoffs: BTreeMap<PoolId, Timestamp>,
    /// Pools acknowledged closed, with the round that acknowledged it.
    closed: BTreeMap<PoolId, u64>,
    /// Rounds run so far (each round's commands are in flight together).
    round: u64,
    /// How far an instance's clock may be from the simulation clock, either way: decisions are
    /// made at most this much before or after the clock readings the model sees.
    pub skew_ms: u64,
}

/// The command an outcome was recorded for: a reuse stands for its original.
fn origin(intents: &[Intent], index: usize) -> usize {
    match intents[index].purpose {
        Purpose::Reuse { of } => origin(intents, of),
        _ => index,
    }
}

impl Model {
    pub fn add(&mut self, intent: Intent) -> usize {
        self.intents.push(intent);
        self.intents.len() - 1
    }

    /// Whether `not-owner` may answer intent `index`: a confirm or cancel of a reservation the
    /// model does not know was made by the intent's own actor.
    fn another_owner(&self, index: usize) -> bool {
        let intent = &self.intents[index];
        let (Action::ConfirmReservation { reservation }
        | Action::CancelReservation { reservation }) = &intent.action
        else {
            return false;
        };
        !self.known.iter().any(|known| {
            known.id.pool == intent.pool
                && known.id.seq == *reservation
                && self.intents[known.intent].actor == intent.actor
        })
    }

    /// Whether intent `index`'s token is certainly still remembered when the highest clock
    /// reading so far is `high_water`: it was recorded no earlier than its first attempt, and
    /// the service's notion of now never exceeds the highest clock reading.
    pub fn certainly_in_window(&self, index: usize, high_water: Timestamp) -> bool {
        let intent = &self.intents[index];
        let window = self.windows.get(&intent.pool).copied().unwrap_or(0);
        intent
            .first_clock
            .is_some_and(|first| high_water.plus_ms(2 * self.skew_ms) < first.plus_ms(window))
    }

    /// Starts a round of commands sent together.
    pub fn next_round(&mut self) {
        self.round += 1;
    }

    /// Notes an attempt sent at `clock`.
    pub fn attempted(&mut self, index: usize, clock: Timestamp) {
        let intent = &mut self.intents[index];
        intent.attempts += 1;
        intent.first_clock = Some(intent.first_clock.map_or(clock, |first| first.min(clock)));
    }

    /// Judges the answer to an attempt of intent `index` sent at `clock`; `high_water` is the
    /// highest clock reading so far. Returns a violation, if any.
    pub fn answered(
        &mut self,
        index: usize,
        answer: Result<Reply, SubmitError>,
        clock: Timestamp,
        high_water: Timestamp,
    ) -> Result<(), String> {
        let purpose = self.intents[index].purpose;
        let describe = |intents: &[Intent]| {
            let intent = &intents[index];
            format!(
                "intent #{index} {} token {} on {}: {:?} ({:?})",
                intent.actor, intent.token, intent.pool, intent.action, intent.purpose
            )
        };
        let reply = match answer {
            Err(SubmitError::Rejected(rejection)) => {
                let code = rejection.code();
                let in_window = match purpose {
                    Purpose::Reuse { of } | Purpose::Collide { with: of } => {
                        self.certainly_in_window(of, high_water)
                    }
                    Purpose::Fresh => false,
                };
                let expected = match purpose {
                    Purpose::Fresh if code == RejectionCode::NotOwner => self.another_owner(index),
                    Purpose::Fresh => code == RejectionCode::NotKnown,
                    Purpose::Collide { .. } => code == RejectionCode::TokenCollision || !in_window,
                    Purpose::Reuse { .. } => !in_window,
                };
                if !expected {
                    return Err(format!(
                        "{}: unexpected unrecorded rejection {rejection}",
                        describe(&self.intents)
                    ));
                }
                // A copy in flight with an acknowledged one may have been refused before the
                // other was decided (another instance had not seen the pool declared yet).
                if self.intents[index].reply().is_none() {
                    self.intents[index].status = Status::Refused(code);
                }
                return Ok(());
            }
            Err(_) => {
                let intent = &mut self.intents[index];
                intent.maybe_recorded = true;
                if intent.purpose != Purpose::Fresh {
                    intent.status = Status::Abandoned;
                }
                return Ok(());
            }
            Ok(reply) => reply,
        };

        // Copies of one command in flight together: all answer the same outcome, and at most
        // one of them decided it (the others replay it), whichever answer arrives first.
        let in_window = self.certainly_in_window(index, high_water);
        if let Some(earlier) = self.intents[index].reply()
            && in_window
            && earlier.outcome != reply.outcome
        {
            return Err(format!(
                "{}: answered {reply:?} after it was acknowledged as {earlier:?} within its window (invariant 5)",
                describe(&self.intents)
            ));
        }
        if !reply.replayed {
            self.intents[index].fresh_answers += 1;
            if self.intents[index].fresh_answers > 1 && in_window {
                return Err(format!(
                    "{}: decided afresh twice within its window, the second time {reply:?} (invariant 5)",
                    describe(&self.intents)
                ));
            }
        }
        match purpose {
            Purpose::Reuse { of } if self.certainly_in_window(of, high_water) => {
                let original = self.intents[of].reply().cloned();
                if !reply.replayed || Some(&reply.outcome) != original.as_ref().map(|r| &r.outcome)
                {
                    return Err(format!(
                        "{}: a retry of an acknowledged token within its window answered {reply:?}, the first answer was {original:?} (invariant 5)",
                        describe(&self.intents)
                    ));
                }
            }
            Purpose::Collide { with } if self.certainly_in_window(with, high_water) => {
                return Err(format!(
                    "{}: reusing a token with other parameters within its window answered {reply:?}, not token-collision (invariant 5)",
                    describe(&self.intents)
                ));
            }
            _ => {}
        }

        self.check_shape(index, &reply.outcome)
            .map_err(|problem| format!("{}: {problem}", describe(&self.intents)))?;
        self.check_window(index, &reply, clock, high_water)
            .map_err(|problem| format!("{}: {problem}", describe(&self.intents)))?;
        self.check_open(index, &reply, clock)
            .map_err(|problem| format!("{}: {problem}", describe(&self.intents)))?;
        self.track(index, &reply)
            .map_err(|problem| format!("{}: {problem}", describe(&self.intents)))?;
        let intent = &mut self.intents[index];
        intent.status = Status::Acknowledged(reply);
        intent.unverified = true;
        Ok(())
    }

    /// The earliest clock reading of an attempt of this command or of the one it reuses: a
    /// lower bound of when its outcome was recorded.
    fn earliest_clock(&self, index: usize) -> Option<Timestamp> {
        let own = self.intents[index].first_clock;
        let original = self.intents[origin(&self.intents, index)].first_clock;
        match (own, original) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The outcome answers the action that was asked, about its own target.
    fn check_shape(&self, index: usize, outcome: &Outcome) -> Result<(), String> {
        let earliest = self.earliest_clock(index);
        let intent = &self.intents[index];
        let target = |seq: u64| ReservationId {
            pool: intent.pool.clone(),
            seq,
        };
        let fits = match (&intent.action, outcome) {
            (_, Outcome::Rejected(rejection)) => !matches!(
                rejection.code(),
                RejectionCode::TokenCollision | RejectionCode::RecordingFailure
            ),
            (Action::DeclarePool { .. }, Outcome::PoolDeclared { pool })
            | (Action::ClosePool, Outcome::PoolClosed { pool }) => *pool == intent.pool,
            (Action::AdjustCapacity { capacity }, Outcome::CapacityAdjusted { capacity: got }) => {
                capacity == got
            }
            (
                Action::Reserve { duration_ms, .. },
                Outcome::Reserved {
                    reservation,
                    expires_at,
                },
            ) => {
                reservation.pool == intent.pool
                    && earliest.is_some_and(|first| {
                        expires_at.plus_ms(self.skew_ms) >= first.plus_ms(*duration_ms)
                    })
            }
            (
                Action::ConfirmReservation { reservation },
                Outcome::Confirmed { reservation: got },
            )
            | (Action::CancelReservation { reservation }, Outcome::Released { reservation: got })
            | (Action::ExpireReservation { reservation }, Outcome::Expired { reservation: got }) => {
                *got == target(*reservation)
            }
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "the outcome {outcome:?} does not answer the action"
            ))
        }
    }

    /// Invariant 4 from the client's side.
    fn check_window(
        &self,
        index: usize,
        reply: &Reply,
        clock: Timestamp,
        high_water: Timestamp,
    ) -> Result<(), String> {
        let intent = &self.intents[index];
        let Some(seq) = intent.action.reservation() else {
            return Ok(());
        };
        let id = ReservationId {
            pool: intent.pool.clone(),
            seq,
        };
        let Some(known) = self.known.iter().find(|known| known.id == id) else {
            return Ok(());
        };
        // A fresh answer was decided at this attempt's clock or later; a replay at the earliest
        // attempt's clock or later.
        let read = if reply.replayed {
            self.earliest_clock(index).unwrap_or(clock)
        } else {
            clock
        };
        let decided_no_earlier_than = Timestamp(read.0.saturating_sub(self.skew_ms));
        let high_water = high_water.plus_ms(self.skew_ms);
        match &reply.outcome {
            Outcome::Confirmed { .. } if decided_no_earlier_than >= known.expires_at => {
                Err(format!(
                    "confirmed although the clock read {decided_no_earlier_than} at/after expires_at {} (invariant 4)",
                    known.expires_at
                ))
            }
            Outcome::Expired { .. } if high_water < known.expires_at => Err(format!(
                "expired although the clock never reached expires_at {} (high water {high_water})",
                known.expires_at
            )),
            _ => Ok(()),
        }
    }

    /// A new hold needs an open pool: not closed in an earlier round, clock before the cutoff.
    fn check_open(&mut self, index: usize, reply: &Reply, clock: Timestamp) -> Result<(), String> {
        let pool = self.intents[index].pool.clone();
        match &reply.outcome {
            Outcome::PoolClosed { .. } => {
                self.closed.entry(pool).or_insert(self.round);
                Ok(())
            }
            Outcome::Reserved { .. } if !reply.replayed => {
                if let Some(round) = self.closed.get(&pool)
                    && *round < self.round
                {
                    return Err(format!(
                        "a new hold on pool {pool}, acknowledged closed in round {round}"
                    ));
                }
                match self.cutoffs.get(&pool) {
                    Some(cutoff) if clock.0.saturating_sub(self.skew_ms) >= cutoff.0 => Err(
                        format!("a new hold at clock {clock}, at/after the pool's cutoff {cutoff}"),
                    ),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Reservations given out and transitions taken, across commands.
    fn track(&mut self, index: usize, reply: &Reply) -> Result<(), String> {
        let source = origin(&self.intents, index);
        match &reply.outcome {
            Outcome::Reserved {
                reservation,
                expires_at,
            } => match self.given.get(reservation) {
                Some(&other) if other != source => Err(format!(
                    "reservation {reservation} was already given to intent #{other}"
                )),
                Some(_) => Ok(()),
                None => {
                    self.given.insert(reservation.clone(), source);
                    self.known.push(Known {
                        id: reservation.clone(),
                        expires_at: *expires_at,
                        intent: source,
                    });
                    Ok(())
                }
            },
            Outcome::Confirmed { reservation }
            | Outcome::Released { reservation }
            | Outcome::Expired { reservation } => match self.transitions.get(reservation) {
                Some((other, earlier)) if *other != source => Err(format!(
                    "reservation {reservation} took a second transition {:?} after {earlier:?} by intent #{other} (terminal absorption)",
                    reply.outcome
                )),
                Some(_) => Ok(()),
                None => {
                    self.transitions
                        .insert(reservation.clone(), (source, reply.outcome.clone()));
                    Ok(())
                }
            },
            _ => Ok(()),
        }
    }

    /// Indexes of intents still unresolved.
    pub fn unresolved(&self) -> Vec<usize> {
        self.intents
            .iter()
            .enumerate()
            .filter(|(_, intent)| intent.status == Status::Unresolved && intent.attempts > 0)
            .map(|(index, _)| index)
            .collect()
    }
}
