//! The defaults table of `docs/client.md` is the batcher's `BatcherConfig::default()`.

use std::time::Duration;

use allot_client::BatcherConfig;

/// The default column of the row whose setting is `name`.
fn documented(doc: &str, name: &str) -> String {
    let start = format!("| `{name}` |");
    let row = doc
        .lines()
        .find(|line| line.starts_with(&start))
        .unwrap_or_else(|| panic!("docs/client.md has no row for `{name}`"));
    row.split('|')
        .nth(2)
        .expect("a default column")
        .trim()
        .to_owned()
}

fn written(duration: Duration) -> String {
    if duration.as_millis() >= 1000 && duration.as_millis().is_multiple_of(1000) {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[test]
fn the_documented_defaults_are_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/client.md");
    let doc = std::fs::read_to_string(path).expect("docs/client.md");
    let config = BatcherConfig::default();
    assert_eq!(documented(&doc, "max_batch"), thousands(config.max_batch));
    assert_eq!(documented(&doc, "linger"), written(config.linger));
    assert_eq!(
        documented(&doc, "connections"),
        thousands(config.connections)
    );
    assert_eq!(
        documented(&doc, "max_pending"),
        thousands(config.max_pending)
    );
    assert_eq!(documented(&doc, "attempts"), config.attempts.to_string());
    assert_eq!(
        documented(&doc, "backoff_initial`, `backoff_max"),
        format!(
            "{}, {}",
            written(config.backoff_initial),
            written(config.backoff_max)
        )
    );
    assert_eq!(documented(&doc, "timeout"), written(config.timeout));
    assert_eq!(documented(&doc, "receipts"), config.receipts.to_string());
}
