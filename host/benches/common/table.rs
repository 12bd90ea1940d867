//! The rows of a bench's final table: a figure, its unit, and the bound it must meet, if it
//! has a target ([`Row`], [`Bound`]).

/// A target's bound on a figure.
pub enum Bound {
    /// At least this much.
    AtLeast(f64),
    /// At most this much.
    AtMost(f64),
}

/// One figure of the final table.
pub struct Row {
    /// What was measured.
    pub what: String,
    /// How much.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// Its target, if it has one.
    pub bound: Option<Bound>,
}

impl Row {
    /// A figure without a target.
    pub fn info(what: &str, value: f64, unit: &'static str) -> Self {
        Self {
            what: what.to_owned(),
            value,
            unit,
            bound: None,
        }
    }

    /// A figure with a target.
    pub fn target(what: &str, value: f64, unit: &'static str, bound: Bound) -> Self {
        Self {
            bound: Some(bound),
            ..Self::info(what, value, unit)
        }
    }

    /// Whether it met its target; `None` without one.
    pub fn passed(&self) -> Option<bool> {
        match self.bound {
            Some(Bound::AtLeast(b)) => Some(self.value >= b),
            Some(Bound::AtMost(b)) => Some(self.value <= b),
            None => None,
        }
    }

    /// The value, to two decimals below 100 and whole above.
    pub fn value_text(&self) -> String {
        let precision = if self.value < 100.0 { 2 } else { 0 };
        format!("{:.*}", precision, self.value)
    }

    /// The bound as `>= B` or `<= B`, `-` without one.
    pub fn bound_text(&self) -> String {
        let shown = |b: f64| {
            if b < 100.0 {
                format!("{b:.2}")
            } else {
                format!("{b:.0}")
            }
        };
        match self.bound {
            Some(Bound::AtLeast(b)) => format!(">= {}", shown(b)),
            Some(Bound::AtMost(b)) => format!("<= {}", shown(b)),
            None => "-".into(),
        }
    }

    /// `PASS`, `MISS`, or nothing without a target.
    pub fn result_text(&self) -> &'static str {
        match self.passed() {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "",
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<42} {:>12} {:<10} {:>10} {:>6}",
            self.what,
            self.value_text(),
            self.unit,
            self.bound_text(),
            self.result_text()
        )
    }
}
