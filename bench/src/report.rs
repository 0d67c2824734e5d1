//! Result tables: one per scenario, a row per figure, a column per system, the goal of
//! issue 8 with whether mqim meets it, and mqim's ratio to each baseline.

use crate::target::Kind;

/// What mqim should reach on a row.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// No goal; informational.
    None,
    /// At most this value.
    AtMost(f64),
    /// At least this value.
    AtLeast(f64),
    /// At least the value of this system in the same run.
    AtLeastOf(Kind),
}

/// One measured figure of one system.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Scenario table.
    pub table: String,
    /// Row label.
    pub label: String,
    /// Unit.
    pub unit: &'static str,
    /// Goal.
    pub goal: Goal,
    /// Value.
    pub value: f64,
}

/// Builds metrics for one table.
pub struct Sink<'a> {
    table: String,
    out: &'a mut Vec<Metric>,
}

impl<'a> Sink<'a> {
    /// Metrics of `table` go to `out`.
    pub fn new(table: &str, out: &'a mut Vec<Metric>) -> Sink<'a> {
        Sink {
            table: table.to_owned(),
            out,
        }
    }

    /// Adds a figure.
    pub fn add(&mut self, label: impl Into<String>, unit: &'static str, goal: Goal, value: f64) {
        self.out.push(Metric {
            table: self.table.clone(),
            label: label.into(),
            unit,
            goal,
            value,
        });
    }

    /// Adds a figure without a goal.
    pub fn info(&mut self, label: impl Into<String>, unit: &'static str, value: f64) {
        self.add(label, unit, Goal::None, value);
    }
}

struct Row {
    label: String,
    unit: &'static str,
    goal: Goal,
    /// Per system, the value of each round that measured it, in round order.
    vals: [Vec<f64>; 3],
}

impl Row {
    /// The median of each system's rounds (the figure the tables show and judge).
    fn mid(&self) -> [Option<f64>; 3] {
        [0, 1, 2].map(|i| median(&self.vals[i]))
    }
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// All tables of a run.
#[derive(Default)]
pub struct Report {
    tables: Vec<(String, Vec<Row>)>,
}

impl Report {
    /// Records `m` as measured on `kind`.
    pub fn put(&mut self, kind: Kind, m: Metric) {
        let ti = match self.tables.iter().position(|(t, _)| *t == m.table) {
            Some(i) => i,
            None => {
                self.tables.push((m.table.clone(), Vec::new()));
                self.tables.len() - 1
            }
        };
        let rows = &mut self.tables[ti].1;
        let ri = match rows.iter().position(|r| r.label == m.label) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    label: m.label.clone(),
                    unit: m.unit,
                    goal: Goal::None,
                    vals: Default::default(),
                });
                rows.len() - 1
            }
        };
        let row = &mut rows[ri];
        if !matches!(m.goal, Goal::None) {
            row.goal = m.goal;
        }
        row.vals[kind.idx()].push(m.value);
    }

    /// The tables as Markdown. A system measured in several rounds shows the median,
    /// then its range in brackets; goals and ratios are judged on the medians.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (title, rows) in &self.tables {
            s.push_str(&format!("\n### {title}\n\n"));
            s.push_str("| figure | target | mqim | rumqttd | mosquitto | ratio mqim÷rumqttd · ÷mosquitto |\n");
            s.push_str("|---|---|---:|---:|---:|---|\n");
            for r in rows {
                let mid = r.mid();
                let cell = |i: usize| {
                    let v = &r.vals[i];
                    match mid[i] {
                        None => "—".into(),
                        Some(m) if v.len() == 1 => fmt(m, r.unit),
                        Some(m) => {
                            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            format!(
                                "{} ({}–{})",
                                fmt(m, r.unit),
                                fmt(lo, r.unit),
                                fmt(hi, r.unit)
                            )
                        }
                    }
                };
                let ratio = |b: Option<f64>| match (mid[0], b) {
                    (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                    _ => "—".into(),
                };
                s.push_str(&format!(
                    "| {} ({}) | {} | {} | {} | {} | {} · {} |\n",
                    r.label,
                    r.unit,
                    goal_cell(r),
                    cell(0),
                    cell(1),
                    cell(2),
                    ratio(mid[1]),
                    ratio(mid[2]),
                ));
            }
        }
        s
    }
}

/// The goal, whether mqim's median meets it, and with several rounds in how many of
/// them it was met (for a goal relative to another system: against that system's
/// value in the same round).
fn goal_cell(r: &Row) -> String {
    let mid = r.mid();
    let m = mid[0];
    let mine = &r.vals[0];
    let (text, met, rounds) = match r.goal {
        Goal::None => return String::new(),
        Goal::AtMost(g) => (
            format!("≤ {}", fmt(g, r.unit)),
            m.map(|v| v <= g),
            mine.iter().filter(|&&v| v <= g).count(),
        ),
        Goal::AtLeast(g) => (
            format!("≥ {}", fmt(g, r.unit)),
            m.map(|v| v >= g),
            mine.iter().filter(|&&v| v >= g).count(),
        ),
        Goal::AtLeastOf(k) => {
            let theirs = &r.vals[k.idx()];
            (
                format!("≥ {}", k.name()),
                m.zip(mid[k.idx()]).map(|(a, b)| a >= b),
                mine.iter().zip(theirs).filter(|(a, b)| a >= b).count(),
            )
        }
    };
    let of = match r.goal {
        Goal::AtLeastOf(k) => mine.len().min(r.vals[k.idx()].len()),
        _ => mine.len(),
    };
    let tally = if of > 1 {
        format!(" (in {rounds} of {of} rounds)")
    } else {
        String::new()
    };
    match met {
        Some(true) => format!("{text}: met{tally}"),
        Some(false) => format!("{text}: **missed**{tally}"),
        None => text,
    }
}

/// Formats `v` for its unit.
pub fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "ms" | "s" | "cores" | "µs" | "MiB/min" => format!("{v:.2}"),
        "KiB" | "MiB" | "%" => format!("{v:.1}"),
        _ => group_digits(v.round() as i64),
    }
}

fn group_digits(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_goals() {
        assert_eq!(fmt(1234567.4, "msg/s"), "1,234,567");
        assert_eq!(fmt(1.234, "ms"), "1.23");
        assert_eq!(fmt(-0.125, "MiB/min"), "-0.12");
        let mut out = Vec::new();
        let mut s = Sink::new("t", &mut out);
        s.add("p99", "ms", Goal::AtMost(10.0), 3.0);
        s.info("x", "count", 5.0);
        let mut r = Report::default();
        for m in out {
            r.put(Kind::Mqim, m);
        }
        let text = r.render();
        assert!(text.contains("≤ 10.00: met"), "{text}");
        assert!(text.contains("| x (count) |"), "{text}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn rounds_show_median_range_and_tally() {
        let mut r = Report::default();
        for (mq, ru) in [
            (520_000.0, 600_000.0),
            (450_000.0, 700_000.0),
            (510_000.0, 500_000.0),
        ] {
            let mut out = Vec::new();
            Sink::new("b", &mut out).add("burst", "msg/s", Goal::AtLeast(500_000.0), mq);
            Sink::new("b", &mut out).add("tput", "msg/s", Goal::AtLeastOf(Kind::Rumqttd), mq);
            for m in out {
                r.put(Kind::Mqim, m);
            }
            let mut out = Vec::new();
            Sink::new("b", &mut out).info("burst", "msg/s", ru);
            Sink::new("b", &mut out).info("tput", "msg/s", ru);
            for m in out {
                r.put(Kind::Rumqttd, m);
            }
        }
        let text = r.render();
        // Median 510,000 meets 500,000; two of the three rounds did.
        assert!(
            text.contains("| burst (msg/s) | ≥ 500,000: met (in 2 of 3 rounds) | 510,000 (450,000–520,000) | 600,000 (500,000–700,000) |"),
            "{text}"
        );
        // Against rumqttd: median 510k < 600k; only round 3 was at least rumqttd's.
        assert!(
            text.contains("≥ rumqttd: **missed** (in 1 of 3 rounds)"),
            "{text}"
        );
        assert!(text.contains("| 0.85 · — |"), "{text}");
    }
}
