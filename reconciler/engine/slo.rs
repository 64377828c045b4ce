//! The SLO gate: no promotion while the error budget burns too fast.
//!
//! Burn rate = error ratio over a window ÷ (1 − objective): at 1× the budget lasts
//! exactly the SLO window. Following the Google SRE workbook's multiwindow, multi-burn-
//! rate alerts, a rollout may not advance while either pair fires:
//! 1 h and 5 m both above 14.4× (2% of a 30-day budget in an hour), or
//! 6 h and 30 m both above 6× (5% in six hours). The short window makes the gate
//! release soon after the burn stops. Invariant: pure; a reading that is missing
//! blocks like a burning one (no promotion without evidence).

/// Error ratios (bad / total) over the four windows and the whole SLO window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub ratio_5m: f64,
    pub ratio_30m: f64,
    pub ratio_1h: f64,
    pub ratio_6h: f64,
    /// Over the SLO's own window (e.g. 30 days), for the remaining budget.
    pub ratio_window: f64,
}

/// The gate's view of a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burn {
    pub rate_5m: f64,
    pub rate_30m: f64,
    pub rate_1h: f64,
    pub rate_6h: f64,
    /// Share of the error budget left over the SLO window (1 = untouched, < 0 = overspent).
    pub budget_remaining: f64,
}

pub const FAST_BURN: f64 = 14.4;
pub const SLOW_BURN: f64 = 6.0;

/// Burn rates for `objective` (e.g. 0.999).
pub fn burn(r: &Reading, objective: f64) -> Burn {
    let budget = (1.0 - objective).max(f64::MIN_POSITIVE);
    Burn {
        rate_5m: r.ratio_5m / budget,
        rate_30m: r.ratio_30m / budget,
        rate_1h: r.ratio_1h / budget,
        rate_6h: r.ratio_6h / budget,
        budget_remaining: 1.0 - r.ratio_window / budget,
    }
}

/// `Some(reason)` when the gate is closed.
pub fn blocks(b: &Burn) -> Option<String> {
    if b.rate_1h > FAST_BURN && b.rate_5m > FAST_BURN {
        return Some(format!(
            "error budget burning at {:.1}× over 1h and {:.1}× over 5m (limit {FAST_BURN}×); {:.1}% of the budget left",
            b.rate_1h,
            b.rate_5m,
            b.budget_remaining * 100.0
        ));
    }
    if b.rate_6h > SLOW_BURN && b.rate_30m > SLOW_BURN {
        return Some(format!(
            "error budget burning at {:.1}× over 6h and {:.1}× over 30m (limit {SLOW_BURN}×); {:.1}% of the budget left",
            b.rate_6h,
            b.rate_30m,
            b.budget_remaining * 100.0
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(r5: f64, r30: f64, r1h: f64, r6h: f64) -> Reading {
        Reading {
            ratio_5m: r5,
            ratio_30m: r30,
            ratio_1h: r1h,
            ratio_6h: r6h,
            ratio_window: 0.0005,
        }
    }

    #[test]
    fn fast_burn_needs_both_windows() {
        // 99.9%: 14.4x is an error ratio of 1.44%.
        let b = burn(&reading(0.02, 0.0, 0.02, 0.0), 0.999);
        assert!(blocks(&b).is_some_and(|r| r.contains("1h")), "{b:?}");
        // The burn stopped: the 5m window releases the gate although 1h still burns.
        let b = burn(&reading(0.0001, 0.0, 0.02, 0.0), 0.999);
        assert_eq!(blocks(&b), None);
    }

    #[test]
    fn slow_burn_pair() {
        // 6x at 99.9% is 0.6%.
        let b = burn(&reading(0.0, 0.007, 0.0, 0.007), 0.999);
        assert!(blocks(&b).is_some_and(|r| r.contains("6h")), "{b:?}");
        let b = burn(&reading(0.0, 0.005, 0.0, 0.007), 0.999);
        assert_eq!(blocks(&b), None);
    }

    #[test]
    fn remaining_budget() {
        let b = burn(&reading(0.0, 0.0, 0.0, 0.0), 0.999);
        assert!((b.budget_remaining - 0.5).abs() < 1e-9, "{b:?}");
    }
}
