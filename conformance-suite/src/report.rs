//! Results and their summaries.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::PlatformChoice;

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
    /// Where it ran.
    pub platform: PlatformChoice,
    /// How long it took.
    pub millis: u64,
    /// The `ioasis` options that select this plugin and its unit (`--backend`, `--plugin`,
    /// `--unit-params`, `--unit-model`), shell-quoted, for [`CaseResult::reproduce`].
    pub selection: String,
    /// Outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl CaseResult {
    /// The command line that reruns this case.
    pub fn reproduce(&self) -> String {
        let selection = if self.selection.is_empty() { String::new() } else { format!(" {}", self.selection) };
        format!(
            "ioasis conformance{selection} --filter {}/{} --seed {}{}",
            self.category,
            self.case,
            self.seed,
            self.platform.cli_args()
        )
    }
}

/// What a run amounts to, as a CI job reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some case ran and none failed (skips are allowed).
    Passed,
    /// At least one case failed.
    Failed,
    /// No case ran: every selected case was skipped, or none was selected. Says why.
    NothingRan(String),
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

    /// What the run amounts to: [`Verdict::Failed`] when a case failed, otherwise
    /// [`Verdict::NothingRan`] when no case ran at all (every result a skip, or no result),
    /// with the skip reasons grouped by plugin; otherwise [`Verdict::Passed`].
    pub fn verdict(&self) -> Verdict {
        if !self.passed() {
            return Verdict::Failed;
        }
        if self.results.iter().any(|r| matches!(r.outcome, Outcome::Passed(_))) {
            return Verdict::Passed;
        }
        if self.results.is_empty() {
            return Verdict::NothingRan("no case was selected (see `ioasis cases`)".into());
        }
        // Every result is a skip: each plugin's distinct reasons, in run order.
        let mut why: Vec<(&str, Vec<&str>)> = Vec::new();
        for r in &self.results {
            let Outcome::Skipped(reason) = &r.outcome else { continue };
            let i = match why.iter().position(|(p, _)| *p == r.plugin) {
                Some(i) => i,
                None => {
                    why.push((&r.plugin, Vec::new()));
                    why.len() - 1
                }
            };
            if !why[i].1.contains(&reason.as_str()) {
                why[i].1.push(reason);
            }
        }
        let parts: Vec<String> =
            why.iter().map(|(p, reasons)| format!("plugin `{p}`: {}", reasons.join("; "))).collect();
        Verdict::NothingRan(format!("nothing could run, every case was skipped: {}", parts.join(" | ")))
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

    /// The results as JUnit XML: one test suite per plugin, one test case per case.
    pub fn to_junit(&self) -> String {
        let mut plugins: Vec<&str> = self.results.iter().map(|r| r.plugin.as_str()).collect();
        plugins.dedup();
        let mut out =
            String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"ioasis conformance\">\n");
        for p in plugins {
            let rs: Vec<&CaseResult> = self.results.iter().filter(|r| r.plugin == p).collect();
            let failures = rs.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
            let skipped = rs.iter().filter(|r| matches!(r.outcome, Outcome::Skipped(_))).count();
            let secs: f64 = rs.iter().map(|r| r.millis as f64 / 1000.0).sum();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{secs:.3}\">",
                xml(p),
                rs.len()
            );
            for r in rs {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
                    xml(p),
                    xml(&r.category),
                    xml(&r.case),
                    r.millis as f64 / 1000.0
                );
                match &r.outcome {
                    Outcome::Passed(_) => out.push_str("/>\n"),
                    Outcome::Skipped(why) => {
                        let _ = writeln!(out, ">\n      <skipped message=\"{}\"/>\n    </testcase>", xml(why));
                    }
                    Outcome::Failed(why) => {
                        let _ = writeln!(
                            out,
                            ">\n      <failure message=\"{}\">reproduce: {}</failure>\n    </testcase>",
                            xml(why),
                            xml(&r.reproduce())
                        );
                    }
                }
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }

    /// The results as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// What the self-test ([`crate::self_test`]) found for one broken variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VariantResult {
    /// The plugin it breaks.
    pub plugin: String,
    /// Its `defect` parameter.
    pub variant: String,
    /// The category that must catch it.
    pub expected_category: String,
    /// The categories in which some case failed (empty: the variant passed the suite).
    pub caught_in: Vec<String>,
    /// Why the variant could not run, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VariantResult {
    /// True when a case of the expected category failed on the variant.
    pub fn caught(&self) -> bool {
        self.error.is_none() && self.caught_in.contains(&self.expected_category)
    }
}

/// A table of self-test results: each variant, the categories that caught it, and a verdict.
pub fn variant_table(results: &[VariantResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<8} {:<34} {:<14} {:<8} caught in", "plugin", "variant", "expected", "verdict");
    for r in results {
        let verdict = if r.caught() { "caught" } else { "MISSED" };
        let caught = match &r.error {
            Some(e) => format!("(not run: {e})"),
            None if r.caught_in.is_empty() => "(nothing: the variant passed)".to_string(),
            None => r.caught_in.join(", "),
        };
        let _ = writeln!(out, "{:<8} {:<34} {:<14} {verdict:<8} {caught}", r.plugin, r.variant, r.expected_category);
    }
    let missed = results.iter().filter(|r| !r.caught()).count();
    let _ = writeln!(
        out,
        "\n{} variant(s), {} caught in their category, {missed} missed",
        results.len(),
        results.len() - missed
    );
    out
}

/// Self-test results as a JSON array, one object per variant: `plugin`, `variant`,
/// `expected_category`, `caught_in` (and `error` when it could not run).
pub fn variants_json(results: &[VariantResult]) -> String {
    serde_json::to_string_pretty(results).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Escapes text for an XML attribute or element.
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome) -> CaseResult {
        CaseResult {
            plugin: "p<1>".into(),
            category: "c".into(),
            case: "n".into(),
            seed: 3,
            platform: PlatformChoice::default(),
            millis: 5,
            selection: "--plugin /opt/p.so --unit-params 'defect = \"x\"'".into(),
            outcome,
        }
    }

    #[test]
    fn junit_counts_and_escapes() {
        let r = Report {
            results: vec![
                result(Outcome::Passed("ok".into())),
                result(Outcome::Failed("a \"bad\" & <odd> thing".into())),
                result(Outcome::Skipped("no PASID".into())),
            ],
        };
        let x = r.to_junit();
        assert!(x.contains(r#"<testsuite name="p&lt;1&gt;" tests="3" failures="1" skipped="1""#), "{x}");
        assert!(x.contains("a &quot;bad&quot; &amp; &lt;odd&gt; thing"), "{x}");
        assert!(
            x.contains("reproduce: ioasis conformance --plugin /opt/p.so --unit-params &apos;defect = &quot;x&quot;&apos; --filter c/n --seed 3")
                || x.contains("reproduce: ioasis conformance --plugin /opt/p.so --unit-params 'defect = &quot;x&quot;' --filter c/n --seed 3"),
            "{x}"
        );
        assert!(!r.passed());
        assert!(r.summary().contains("FAILED p<1> c/n"));
    }

    fn skipped(plugin: &str, why: &str) -> CaseResult {
        CaseResult { plugin: plugin.into(), ..result(Outcome::Skipped(why.into())) }
    }

    #[test]
    fn verdict_passes_when_something_ran_even_with_skips() {
        let r = Report { results: vec![result(Outcome::Passed("ok".into())), skipped("p", "no PASID")] };
        assert_eq!(r.verdict(), Verdict::Passed);
    }

    #[test]
    fn verdict_fails_on_any_failure_even_among_skips() {
        let r = Report { results: vec![skipped("p", "no PASID"), result(Outcome::Failed("bad".into()))] };
        assert_eq!(r.verdict(), Verdict::Failed);
    }

    #[test]
    fn verdict_says_nothing_ran_with_the_reasons_grouped_by_plugin() {
        let no_model = "no hardware model for plugin `x` in this binary";
        let r = Report {
            results: vec![
                skipped("x", no_model),
                skipped("x", no_model),
                skipped("y", "no PASID"),
                skipped("y", "no nesting"),
                skipped("y", "no PASID"),
            ],
        };
        let Verdict::NothingRan(why) = r.verdict() else { panic!("{:?}", r.verdict()) };
        assert_eq!(
            why,
            format!(
                "nothing could run, every case was skipped: plugin `x`: {no_model} | plugin `y`: no PASID; no nesting"
            )
        );
    }

    #[test]
    fn verdict_says_nothing_ran_when_no_case_was_selected() {
        let Verdict::NothingRan(why) = Report::default().verdict() else { panic!() };
        assert!(why.contains("no case was selected"), "{why}");
    }
}
