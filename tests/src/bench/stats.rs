//! Small statistics over samples: percentiles, medians and their display.

use std::time::Duration;

use serde_json::{Value, json};

/// The `p`th percentile (0 to 100) of `samples`, by nearest rank, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `samples`.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// p50, p99, mean and extremes of latency samples, in milliseconds, as JSON.
pub fn latency_json(samples: &[Duration]) -> Value {
    let mean =
        samples.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / samples.len().max(1) as f64;
    json!({
        "samples": samples.len(),
        "p50_ms": round3(percentile_ms(samples, 50.0)),
        "p99_ms": round3(percentile_ms(samples, 99.0)),
        "mean_ms": round3(mean),
        "min_ms": round3(percentile_ms(samples, 0.0)),
        "max_ms": round3(percentile_ms(samples, 100.0)),
    })
}

/// Rounds to three decimals, for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// A duration for people: µs, ms or s.
pub fn human(d: Duration) -> String {
    human_ms(d.as_secs_f64() * 1e3)
}

/// Milliseconds for people.
pub fn human_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 1_000.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

/// Bytes for people.
pub fn human_bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    }
}

/// Microseconds per entry.
pub fn per_entry_us(d: Duration, entries: usize) -> f64 {
    round3(d.as_secs_f64() * 1e6 / entries.max(1) as f64)
}
