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
    vals: [Option<f64>; 3],
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
                    vals: [None; 3],
                });
                rows.len() - 1
            }
        };
        let row = &mut rows[ri];
        if !matches!(m.goal, Goal::None) {
            row.goal = m.goal;
        }
        row.vals[kind.idx()] = Some(m.value);
    }

    /// The tables as Markdown.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (title, rows) in &self.tables {
            s.push_str(&format!("\n### {title}\n\n"));
            s.push_str("| figure | target | mqim | rumqttd | mosquitto | ratio mqim÷rumqttd · ÷mosquitto |\n");
            s.push_str("|---|---|---:|---:|---:|---|\n");
            for r in rows {
                let cell = |v: Option<f64>| v.map(|v| fmt(v, r.unit)).unwrap_or_else(|| "—".into());
                let ratio = |b: Option<f64>| match (r.vals[0], b) {
                    (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                    _ => "—".into(),
                };
                s.push_str(&format!(
                    "| {} ({}) | {} | {} | {} | {} | {} · {} |\n",
                    r.label,
                    r.unit,
                    goal_cell(r),
                    cell(r.vals[0]),
                    cell(r.vals[1]),
                    cell(r.vals[2]),
                    ratio(r.vals[1]),
                    ratio(r.vals[2]),
                ));
            }
        }
        s
    }
}

fn goal_cell(r: &Row) -> String {
    let m = r.vals[0];
    let (text, met) = match r.goal {
        Goal::None => return String::new(),
        Goal::AtMost(g) => (format!("≤ {}", fmt(g, r.unit)), m.map(|v| v <= g)),
        Goal::AtLeast(g) => (format!("≥ {}", fmt(g, r.unit)), m.map(|v| v >= g)),
        Goal::AtLeastOf(k) => (
            format!("≥ {}", k.name()),
            m.zip(r.vals[k.idx()]).map(|(a, b)| a >= b),
        ),
    };
    match met {
        Some(true) => format!("{text}: met"),
        Some(false) => format!("{text}: **missed**"),
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
}
