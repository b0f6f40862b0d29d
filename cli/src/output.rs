//! How results look: aligned text tables, key/value views of JSON, JSON for machines, the
//! one-line error, and a spinner for slow calls on a terminal.
//!
//! Everything here returns strings, so it is tested without capturing stdout.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// A text table: a header row, then rows, columns padded to their widest cell and
/// separated by two spaces. The last column is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < columns {
                    line.push_str(&" ".repeat(w.saturating_sub(width(cell))));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The width of a cell on a terminal, counted in characters.
fn width(text: &str) -> usize {
    text.chars().count()
}

/// Keeps a cell on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A JSON value as one table cell: strings as they are, null as `-`, arrays joined by
/// commas, objects as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => one_line(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

/// A field of a JSON object as a cell.
pub fn field(v: &Value, key: &str) -> String {
    cell(v.get(key).unwrap_or(&Value::Null))
}

/// The first `n` characters of a text, for hashes and keys.
pub fn short(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// Aligned `key  value` lines.
pub fn pairs(items: &[(&str, String)]) -> String {
    let w = items.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in items {
        push_pair(&mut out, "", k, w, v);
    }
    out
}

fn push_pair(out: &mut String, indent: &str, key: &str, w: usize, value: &str) {
    let pad = " ".repeat(w.saturating_sub(width(key)));
    let mut lines = value.lines();
    let first = lines.next().unwrap_or("");
    out.push_str(format!("{indent}{key}{pad}  {first}").trim_end());
    out.push('\n');
    // Continuation lines of a long text line up under its first line.
    let hang = " ".repeat(width(indent) + w + 2);
    for line in lines {
        out.push_str(format!("{hang}{line}").trim_end());
        out.push('\n');
    }
}

/// A JSON document as an indented key/value view: scalars beside their keys, then nested
/// objects under theirs, indented by two spaces, each in key order.
pub fn tree(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(_) | Value::Array(_) => push_tree(&mut out, v, 0),
        other => {
            out.push_str(&scalar("", other));
            out.push('\n');
        }
    }
    out
}

fn is_nested(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(items) => items.iter().any(|i| i.is_object() || i.is_array()),
        _ => false,
    }
}

/// A scalar (or flat array) as text; integer times in milliseconds under the keys `at` and
/// `created` are shown as RFC 3339.
fn scalar(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if key == "at" || key == "created" => n
            .as_i64()
            .and_then(format_ms)
            .unwrap_or_else(|| n.to_string()),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items
            .iter()
            .map(|i| scalar("", i))
            .collect::<Vec<_>>()
            .join(", "),
        other => cell(other),
    }
}

fn push_tree(out: &mut String, v: &Value, depth: usize) {
    let indent = "  ".repeat(depth);
    let entries: Vec<(String, &Value)> = match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, &Value)> =
                m.iter().map(|(k, v)| (k.clone(), v)).collect();
            // Scalars first, then nested objects, each in key order.
            entries.sort_by(|a, b| (is_nested(a.1), &a.0).cmp(&(is_nested(b.1), &b.0)));
            entries
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("#{}", i + 1), v))
            .collect(),
        _ => return,
    };
    let w = entries
        .iter()
        .filter(|(_, v)| !is_nested(v))
        .map(|(k, _)| width(k))
        .max()
        .unwrap_or(0);
    for (k, v) in entries {
        if is_nested(v) {
            out.push_str(&format!("{indent}{k}\n"));
            push_tree(out, v, depth + 1);
        } else {
            push_pair(out, &indent, &k, w, &scalar(&k, v));
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn format_ms(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A byte count for people: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Writes text to stdout. A closed pipe (`spoc log | head`) comes back as an error, which
/// `main` ends on quietly.
pub fn stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether an error is a closed stdout pipe.
/// Writes text to stderr: hints that are not the command's output.
pub fn stderr(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    err.write_all(text.as_bytes())?;
    err.flush()
}

pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// JSON for machines, pretty-printed.
pub fn json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The one line a failure prints: `spoc: ` and the error with its causes, on one line.
pub fn error_line(error: &anyhow::Error) -> String {
    format!("spoc: {}", one_line(&format!("{error:#}")))
}

/// A clap usage error as one line: its message without the usage and help that follow.
pub fn usage_line(rendered: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in rendered.lines() {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(current.join(" "));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        paragraphs.push(current.join(" "));
    }
    let text = paragraphs.join("; ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("spoc: {text} (see --help)")
}

/// A spinner on stderr while a slow call runs; cleared when dropped.
#[derive(Debug)]
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Starts a spinner only when `enabled` (neither --json nor --quiet) and stderr is a
    /// terminal.
    pub fn start(enabled: bool, message: &str) -> Spinner {
        if !enabled || !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(bar))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_do_not_trail() {
        let mut t = Table::new(&["ID", "STATUS", "TITLE"]);
        t.row(vec![
            "obstacles/LT/1".into(),
            "reported".into(),
            "Slow".into(),
        ]);
        t.row(vec!["o/FI/2".into(), "-".into(), "Ünïcode title".into()]);
        assert_eq!(
            t.render(),
            "ID              STATUS    TITLE\n\
             obstacles/LT/1  reported  Slow\n\
             o/FI/2          -         Ünïcode title\n"
        );
        let mut short_row = Table::new(&["A", "B"]);
        short_row.row(vec!["x".into()]);
        assert_eq!(short_row.render(), "A  B\nx\n");
    }

    #[test]
    fn cells_are_one_line() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("two\nlines")), "two lines");
        assert_eq!(cell(&json!(["FI", "SE"])), "FI,SE");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(field(&json!({"a": "b"}), "missing"), "-");
        assert_eq!(short("0123456789abcdef", 12), "0123456789ab");
    }

    #[test]
    fn trees_indent_nested_objects() {
        let doc = json!({
            "id": "obstacles/LT/1",
            "title": "Slow replies",
            "endorsements": {"FI": {"stance": "support", "at": 0}},
            "comments": {},
            "description": "first\nsecond",
            "tags": ["a", "b"],
        });
        assert_eq!(
            tree(&doc),
            "comments     -\n\
             description  first\n\
             \x20            second\n\
             id           obstacles/LT/1\n\
             tags         a, b\n\
             title        Slow replies\n\
             endorsements\n\
             \x20 FI\n\
             \x20   at      1970-01-01T00:00:00Z\n\
             \x20   stance  support\n"
        );
    }

    #[test]
    fn pairs_and_bytes() {
        assert_eq!(
            pairs(&[("state", "LT".into()), ("entries", "6".into())]),
            "state    LT\nentries  6\n"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_581_056), "1.5 MiB");
    }

    #[test]
    fn errors_are_one_line() {
        let e = anyhow::anyhow!("bad\nthing").context("cannot read x");
        assert_eq!(error_line(&e), "spoc: cannot read x: bad thing");
        assert_eq!(
            usage_line(
                "error: unexpected argument '--fo' found\n\n  tip: a similar argument exists: \
                 '--foo'\n\nUsage: spoc status\n\nFor more information, try '--help'.\n"
            ),
            "spoc: unexpected argument '--fo' found; tip: a similar argument exists: '--foo' \
             (see --help)"
        );
    }
}
