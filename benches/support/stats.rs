//! Rounds, medians, spreads, percentiles, and the report.

use serde::Serialize;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub limit_name: String,
    pub limit_value: Option<f64>,
    pub ratio: Option<f64>,
    pub notes: String,
    /// The figure in each round.
    pub rounds: Vec<f64>,
    /// max − min over the rounds.
    pub spread: f64,
    /// The limit in each round.
    pub limit_rounds: Vec<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

pub fn spread(v: &[f64]) -> f64 {
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    if v.is_empty() { 0.0 } else { max - min }
}

/// The p-th percentile (0–100) of durations in seconds, nearest rank.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// A figure from per-round values; `higher_is_better` decides how the ratio reads
/// (figure ÷ limit for rates, limit ÷ figure for times).
pub fn figure(
    name: &str,
    unit: &str,
    rounds: Vec<f64>,
    limit_name: &str,
    limit_rounds: Vec<f64>,
    higher_is_better: bool,
    notes: String,
) -> Figure {
    let value = median(&rounds);
    let spread_of_rounds = spread(&rounds);
    // A figure whose rounds disagree by more than a fifth of its median says so.
    let notes = if rounds.len() > 1 && value.is_finite() && value != 0.0 && spread_of_rounds > 0.2 * value.abs() {
        format!(
            "{notes} (rounds spread {:.0} % of the median: wider than 20 %, read with care)",
            100.0 * spread_of_rounds / value.abs()
        )
    } else {
        notes
    };
    let limit_value = (!limit_rounds.is_empty()).then(|| median(&limit_rounds));
    let ratio = limit_value.map(|l| if higher_is_better { value / l } else { l / value });
    Figure {
        name: name.into(),
        value,
        unit: unit.into(),
        limit_name: limit_name.into(),
        limit_value,
        ratio,
        notes,
        spread: spread_of_rounds,
        rounds,
        limit_rounds,
    }
}

pub fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "{:<16} {:>12} {:<10} {:>9}  {:<44} {:>12} {:>7}",
        "name", "value", "unit", "spread", "limit", "limit value", "ratio"
    );
    println!("{}", "-".repeat(118));
    for f in figures {
        println!(
            "{:<16} {:>12.1} {:<10} {:>9.1}  {:<44} {:>12} {:>7}",
            f.name,
            f.value,
            f.unit,
            f.spread,
            f.limit_name,
            f.limit_value.map_or("—".into(), |v| format!("{v:.1}")),
            f.ratio.map_or("—".into(), |r| format!("{r:.2}")),
        );
        if !f.notes.is_empty() {
            println!("{:<16} {}", "", f.notes);
        }
    }
}
