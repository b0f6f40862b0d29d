//! What a scenario hands back: its JSON figures, its table rows and its notes, and the
//! printing of the table for people.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The size or setting measured, such as "10k entries" or "31 nodes".
    pub case: String,
    /// What is measured, such as "time" or "p99".
    pub measure: String,
    pub spoc: String,
    pub baseline: String,
    /// spocnet over the baseline, where the two compare.
    pub ratio: Option<f64>,
    /// The target, in words, such as "≤ 1.3×"; empty when the figure is context.
    pub target: String,
    /// Whether the target is met; `None` for context figures.
    pub met: Option<bool>,
}

impl Row {
    /// A row with a ratio compared against a "≤ limit×" target.
    pub fn ratio(
        case: impl Into<String>,
        measure: impl Into<String>,
        spoc: String,
        baseline: String,
        ratio: f64,
        limit: Option<f64>,
    ) -> Row {
        Row {
            case: case.into(),
            measure: measure.into(),
            spoc,
            baseline,
            ratio: Some(ratio),
            target: limit.map_or_else(String::new, |l| format!("≤ {l}×")),
            met: limit.map(|l| ratio <= l),
        }
    }

    /// A row of context: figures without a target.
    pub fn context(
        case: impl Into<String>,
        measure: impl Into<String>,
        spoc: String,
        baseline: String,
    ) -> Row {
        Row {
            case: case.into(),
            measure: measure.into(),
            spoc,
            baseline,
            ratio: None,
            target: String::new(),
            met: None,
        }
    }
}

/// The result of one scenario.
#[derive(Debug)]
pub struct Outcome {
    /// The scenario's key in the JSON object.
    pub key: &'static str,
    pub title: String,
    pub json: Value,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// The scenario could not be measured (a failure, not a missed target).
    pub failed: bool,
}

impl Outcome {
    pub fn new(key: &'static str, title: impl Into<String>) -> Outcome {
        Outcome {
            key,
            title: title.into(),
            json: json!({}),
            rows: Vec::new(),
            notes: Vec::new(),
            failed: false,
        }
    }

    /// A scenario that failed with `error`.
    pub fn failure(key: &'static str, title: impl Into<String>, error: &anyhow::Error) -> Outcome {
        let message = format!("{error:#}");
        let mut o = Outcome::new(key, title);
        o.json = json!({"error": message, "target_met": false});
        o.notes.push(format!("FAILED: {message}"));
        o.failed = true;
        o
    }

    /// Whether every target of the scenario is met (`None` when it has none).
    pub fn target_met(&self) -> Option<bool> {
        let verdicts: Vec<bool> = self.rows.iter().filter_map(|r| r.met).collect();
        (!verdicts.is_empty()).then(|| verdicts.iter().all(|m| *m))
    }
}

/// The table for people: one section per scenario, then its notes.
pub fn table(outcomes: &[&Outcome]) -> String {
    let header = [
        "case", "measure", "spocnet", "baseline", "ratio", "target", "verdict",
    ];
    let mut lines: Vec<[String; 7]> = Vec::new();
    for o in outcomes {
        for r in &o.rows {
            lines.push([
                r.case.clone(),
                r.measure.clone(),
                r.spoc.clone(),
                r.baseline.clone(),
                r.ratio.map_or_else(String::new, |x| format!("{x:.2}×")),
                r.target.clone(),
                match r.met {
                    Some(true) => "met".into(),
                    Some(false) => "MISSED".into(),
                    None => String::new(),
                },
            ]);
        }
    }
    let mut widths = header.map(|h| h.chars().count());
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            // Figures are right-aligned, words left-aligned.
            if (2..=4).contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut row_index = 0;
    for o in outcomes {
        let verdict = match (o.failed, o.target_met()) {
            (true, _) => "FAILED",
            (_, Some(true)) => "target met",
            (_, Some(false)) => "target MISSED",
            (_, None) => "no target",
        };
        let _ = writeln!(out, "\n## {} ({verdict})", o.title);
        if !o.rows.is_empty() {
            let _ = writeln!(out, "{}", fmt_line(&head));
            for _ in &o.rows {
                let _ = writeln!(out, "{}", fmt_line(&lines[row_index]));
                row_index += 1;
            }
        }
        for n in &o.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}
