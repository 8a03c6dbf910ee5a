//! Prometheus metrics of the service, served at `/metrics` on the metrics listener
//! (`allot serve --metrics-listen`), apart from the API.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    // Borrowed when static (the usual case), so counting a command does not allocate.
    pub action: Cow<'static, str>,
    pub outcome: Cow<'static, str>,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub commands: Family<CommandLabels, Counter>,
    pub command_seconds: Histogram,
    pub version_conflicts: Counter<u64, AtomicU64>,
    pub append_batch_events: Histogram,
    pub sweeper_lag_seconds: Histogram,
    pub sweeper_expired: Counter<u64, AtomicU64>,
    pub signature_batch_signatures: Histogram,
    /// Events the background log verifier has checked, once it finished a pass.
    pub log_verified_events: Gauge<u64, AtomicU64>,
    /// What the background log verifier found damaged, if anything: `/healthz` turns unhealthy.
    log_damage: std::sync::Mutex<Option<String>>,
    /// Seals the server key signed: one per group commit whose receipts were asked for, and
    /// one per new head read.
    pub seal_signatures: Counter<u64, AtomicU64>,
    /// Commands per signed submission batch (`POST /v1/batches`).
    pub submission_batch_commands: Histogram,
    /// Time from receiving a signed batch to answering it.
    pub submission_batch_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("allot");
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands handled, by action and outcome (ok, replayed, or the rejection code)",
            commands.clone(),
        );
        let command_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "command_seconds",
            "Time from receiving a command to answering it",
            command_seconds.clone(),
        );
        let version_conflicts = Counter::default();
        registry.register(
            "version_conflicts",
            "Appends refused because another writer moved the pool stream first",
            version_conflicts.clone(),
        );
        let append_batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "append_batch_events",
            "Events per pool append (commands decided back to back)",
            append_batch_events.clone(),
        );
        let sweeper_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "sweeper_lag_seconds",
            "How long after expires_at the sweeper expired a hold",
            sweeper_lag_seconds.clone(),
        );
        let sweeper_expired = Counter::default();
        registry.register(
            "sweeper_expired",
            "Holds the sweeper expired",
            sweeper_expired.clone(),
        );
        let signature_batch_signatures = Histogram::new(exponential_buckets(1.0, 2.0, 7));
        registry.register(
            "signature_batch_signatures",
            "Request signatures verified together in one batch",
            signature_batch_signatures.clone(),
        );
        let log_verified_events = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "log_verified_events",
            "Events of the log the background verifier checked in its last finished pass",
            log_verified_events.clone(),
        );
        let seal_signatures = Counter::default();
        registry.register(
            "seal_signatures",
            "Seals the server signed (one per group commit a receipt or the head needed)",
            seal_signatures.clone(),
        );
        let submission_batch_commands = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "submission_batch_commands",
            "Commands per signed submission batch",
            submission_batch_commands.clone(),
        );
        let submission_batch_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "submission_batch_seconds",
            "Time from receiving a signed submission batch to answering it",
            submission_batch_seconds.clone(),
        );
        Metrics {
            submission_batch_commands,
            submission_batch_seconds,
            log_verified_events,
            log_damage: std::sync::Mutex::new(None),
            registry,
            commands,
            command_seconds,
            version_conflicts,
            append_batch_events,
            sweeper_lag_seconds,
            sweeper_expired,
            signature_batch_signatures,
            seal_signatures,
        }
    }

    pub fn count_command(&self, action: &'static str, outcome: impl Into<Cow<'static, str>>) {
        self.commands
            .get_or_create(&CommandLabels {
                action: Cow::Borrowed(action),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Records one answered submission batch of `commands` members.
    pub fn observe_batch(&self, commands: usize, seconds: f64) {
        self.submission_batch_commands.observe(commands as f64);
        self.submission_batch_seconds.observe(seconds);
    }

    /// Records damage the background verifier found.
    pub fn set_log_damage(&self, damage: String) {
        *self
            .log_damage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(damage);
    }

    /// Damage the background verifier found, if any.
    pub fn log_damage(&self) -> Option<String> {
        self.log_damage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
