//! Results and their summaries.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

/// What a case gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "lowercase")]
pub enum Outcome {
    /// Passed, with a detail.
    Passed(String),
    /// Failed, with why.
    Failed(String),
    /// Could not run here, with why.
    Skipped(String),
}

/// One case against one plugin.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Plugin name.
    pub plugin: String,
    /// Category.
    pub category: String,
    /// Case name.
    pub case: String,
    /// Seed it ran with.
    pub seed: u64,
    /// Outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl CaseResult {
    /// The command line that reruns this case.
    pub fn reproduce(&self) -> String {
        format!("ioasis conformance --filter {}/{} --seed {}", self.category, self.case, self.seed)
    }
}

/// Every result.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// In run order.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// True when no case failed.
    pub fn passed(&self) -> bool {
        !self.results.iter().any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    /// A table per plugin and category: passed, failed, skipped; then every failure with
    /// the command that reproduces it.
    pub fn summary(&self) -> String {
        let mut rows: BTreeMap<(String, String), [usize; 3]> = BTreeMap::new();
        for r in &self.results {
            let e = rows.entry((r.plugin.clone(), r.category.clone())).or_default();
            match r.outcome {
                Outcome::Passed(_) => e[0] += 1,
                Outcome::Failed(_) => e[1] += 1,
                Outcome::Skipped(_) => e[2] += 1,
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "{:<20} {:<16} {:>6} {:>6} {:>7}", "plugin", "category", "passed", "failed", "skipped");
        for ((p, c), [ok, bad, skip]) in &rows {
            let _ = writeln!(out, "{p:<20} {c:<16} {ok:>6} {bad:>6} {skip:>7}");
        }
        for r in &self.results {
            if let Outcome::Failed(why) = &r.outcome {
                let _ = writeln!(
                    out,
                    "\nFAILED {} {}/{}: {why}\n  reproduce: {}",
                    r.plugin,
                    r.category,
                    r.case,
                    r.reproduce()
                );
            }
        }
        out
    }

    /// The results as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
