//! Repeated runs of a scenario: every numeric figure of the runs' JSON records as median and
//! range, printed with the command that reproduces them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One figure across runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The figures of several runs of one command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunsSummary {
    pub command: String,
    pub scenario: String,
    pub runs: usize,
    /// Every numeric member of the runs' records, by name, in name order.
    pub figures: BTreeMap<String, Spread>,
}

/// `args` without a `--runs N` or `--runs=N`.
pub fn without_runs(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if arg == "--runs" {
            skip_value = true;
        } else if !arg.starts_with("--runs=") {
            kept.push(arg);
        }
    }
    kept
}

/// The median (the mean of the middle two for an even count), min and max of `values`.
pub fn spread(values: &mut [f64]) -> Option<Spread> {
    values.sort_by(f64::total_cmp);
    let (first, last) = (values.first()?, values.last()?);
    let middle = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    };
    Some(Spread {
        median,
        min: *first,
        max: *last,
    })
}

/// Summarizes the runs' records: each numeric member present in every run.
pub fn summarize(command: &str, results: &[Value]) -> RunsSummary {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for result in results {
        if let Some(members) = result.as_object() {
            for (name, value) in members {
                if let Some(number) = value.as_f64() {
                    values.entry(name.clone()).or_default().push(number);
                }
            }
        }
    }
    let figures = values
        .into_iter()
        .filter(|(_, numbers)| numbers.len() == results.len())
        .filter_map(|(name, mut numbers)| spread(&mut numbers).map(|spread| (name, spread)))
        .collect();
    let scenario = results
        .first()
        .and_then(|result| result.get("scenario"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    RunsSummary {
        command: command.to_owned(),
        scenario,
        runs: results.len(),
        figures,
    }
}

impl std::fmt::Display for RunsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: median and range of {} runs",
            self.scenario, self.runs
        )?;
        writeln!(f, "command: {}", self.command)?;
        for (name, spread) in &self.figures {
            writeln!(
                f,
                "  {name}: {} ({}–{})",
                figure(spread.median),
                figure(spread.min),
                figure(spread.max)
            )?;
        }
        Ok(())
    }
}

/// A figure with the precision it needs: whole numbers as integers, small ones with decimals.
fn figure(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_is_dropped_in_both_spellings() {
        let args = [
            "bench",
            "uniform",
            "--runs",
            "3",
            "--seconds",
            "2",
            "--runs=5",
        ];
        assert_eq!(
            without_runs(args.map(str::to_owned)),
            ["bench", "uniform", "--seconds", "2"]
        );
    }

    #[test]
    fn median_and_range_of_odd_and_even_counts() {
        let odd = spread(&mut [3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = spread(&mut [4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert!(spread(&mut []).is_none());
    }

    #[test]
    fn summary_keeps_numbers_present_in_every_run() {
        let runs = [
            serde_json::json!({"scenario": "uniform", "commands_per_sec": 300.0, "p99_us": 9.0, "notes": "x"}),
            serde_json::json!({"scenario": "uniform", "commands_per_sec": 100.0, "p99_us": 7.0}),
            serde_json::json!({"scenario": "uniform", "commands_per_sec": 200.0}),
        ];
        let summary = summarize("allot bench uniform --runs 3", &runs);
        assert_eq!(summary.scenario, "uniform");
        assert_eq!(summary.runs, 3);
        assert_eq!(summary.figures.len(), 1);
        assert_eq!(
            summary.figures["commands_per_sec"],
            Spread {
                median: 200.0,
                min: 100.0,
                max: 300.0
            }
        );
    }
}
