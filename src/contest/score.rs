//! The contest's score (section 5 of the spec), exactly, with `rust_decimal`.
//!
//! `score = (Σ amount − Σ amount × fee) × (1 + bonus − fine)`, where
//! `bonus = max(round2((11 − round2(p99_ms)) × 0.02), 0)` and `fine = 0.35` when any
//! consistency check found a difference. Rounding is half away from zero, like the
//! JavaScript `Math.round` of the k6 script on these positive values.
//!
//! ```
//! use rinha::contest::score::{Inputs, score};
//! use rust_decimal::Decimal;
//! // The spec's worked example: the 2025 winner's final.
//! let winner = Inputs {
//!     default_cents: 52_945 * 2005, fallback_cents: 37_646 * 2005,
//!     default_fee: Decimal::new(7, 2), fallback_fee: Decimal::new(10, 2),
//!     p99_ms: Decimal::new(255, 2), inconsistencies: 0,
//! };
//! assert_eq!(score(&winner).to_string(), "1949876.38");
//! ```
use rust_decimal::{Decimal, RoundingStrategy};

/// What the score is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// Σ amount the default processor recorded, in cents.
    pub default_cents: u64,
    /// Σ amount the fallback processor recorded, in cents.
    pub fallback_cents: u64,
    /// Default's fee, e.g. 0.07.
    pub default_fee: Decimal,
    /// Fallback's fee, e.g. 0.10.
    pub fallback_fee: Decimal,
    /// p99 of every successful request, ms.
    pub p99_ms: Decimal,
    /// Sum of the consistency checks' differences.
    pub inconsistencies: u64,
}

/// Rounds to 2 decimals, half away from zero.
pub fn round2(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// The p99 bonus (0.17 for 2.55 ms).
pub fn bonus(p99_ms: Decimal) -> Decimal {
    let b = round2((Decimal::from(11) - round2(p99_ms)) * Decimal::new(2, 2));
    b.max(Decimal::ZERO)
}

/// The fine: 0.35 if any check found a difference.
pub fn fine(inconsistencies: u64) -> Decimal {
    if inconsistencies > 0 {
        Decimal::new(35, 2)
    } else {
        Decimal::ZERO
    }
}

/// Money kept: amounts minus fees.
pub fn net(i: &Inputs) -> Decimal {
    let d = Decimal::new(i.default_cents as i64, 2);
    let f = Decimal::new(i.fallback_cents as i64, 2);
    d - d * i.default_fee + f - f * i.fallback_fee
}

/// The score, rounded to cents.
pub fn score(i: &Inputs) -> Decimal {
    round2(net(i) * (Decimal::ONE + bonus(i.p99_ms) - fine(i.inconsistencies)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn inputs(dn: u64, fnn: u64, p99: &str, inc: u64) -> Inputs {
        Inputs {
            default_cents: dn * 2005,
            fallback_cents: fnn * 2005,
            default_fee: d("0.07"),
            fallback_fee: d("0.10"),
            p99_ms: d(p99),
            inconsistencies: inc,
        }
    }

    #[test]
    fn the_specs_worked_example() {
        assert_eq!(score(&inputs(52_945, 37_646, "2.55", 0)), d("1949876.38"));
        assert_eq!(net(&inputs(52_945, 37_646, "2.55", 0)), d("1666561.0125"));
    }

    #[test]
    fn bonus_points_from_the_spec() {
        assert_eq!(bonus(d("2.55")), d("0.17"));
        assert_eq!(bonus(d("1")), d("0.20"));
        assert_eq!(bonus(d("0.5")), d("0.21"));
        assert_eq!(bonus(d("11")), d("0"));
        assert_eq!(bonus(d("25")), d("0"));
        // p99 is rounded first: 2.554 -> 2.55 -> 0.169 -> 0.17; 2.556 -> 2.56 -> 0.1688 -> 0.17.
        assert_eq!(bonus(d("2.554")), d("0.17"));
        assert_eq!(bonus(d("2.75")), d("0.17")); // 0.165 rounds half away from zero
        assert_eq!(bonus(d("2.76")), d("0.16"));
    }

    #[test]
    fn any_inconsistency_costs_35_percent() {
        let clean = score(&inputs(1000, 0, "11", 0));
        let fined = score(&inputs(1000, 0, "11", 1));
        assert_eq!(clean, d("18646.50"));
        assert_eq!(fined, round2(d("18646.50") * d("0.65")));
    }

    #[test]
    fn fallback_costs_the_fee_gap() {
        let all_default = score(&inputs(90_600, 0, "1", 0));
        let all_fallback = score(&inputs(0, 90_600, "1", 0));
        assert_eq!(
            all_default - all_fallback,
            round2(d("90600") * d("20.05") * d("0.03") * d("1.20"))
        );
    }
}
