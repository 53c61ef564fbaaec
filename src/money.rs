//! Exact money: decimal text <-> integer cents. Never `f64`.
//!
//! Owns the rules for an amount we accept: a JSON number (not a string), greater than zero,
//! at most two decimal places once trailing zeros are dropped (`20.050` is `20.05`), at most
//! [`MAX_CENTS`], written in plain decimal notation (an exponent such as `1e3` is refused:
//! JSON allows it, but no client of this API needs it and it widens what the parser must get
//! right). `rust_decimal` parses the text exactly, so that no value is ever rounded on its way in.
//!
//! ```
//! use rinha::money::{parse_cents, format_cents};
//! assert_eq!(parse_cents("20.05"), Ok(2005));
//! assert_eq!(parse_cents("19.9"), Ok(1990));
//! assert!(parse_cents("0.001").is_err());
//! assert_eq!(format_cents(1990), "19.90");
//! ```
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// Largest amount accepted: 1,000,000,000.00.
pub const MAX_CENTS: u64 = 100_000_000_000;

/// Why an amount was refused (the message goes into the 400's JSON error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    /// Not a decimal number.
    NotANumber,
    /// Zero or below.
    NotPositive,
    /// More than two decimal places.
    TooPrecise,
    /// Above [`MAX_CENTS`].
    TooLarge,
    /// Written with an exponent (`1e3`).
    Exponent,
}

impl AmountError {
    /// A short JSON-safe message.
    pub fn message(self) -> &'static str {
        match self {
            AmountError::NotANumber => "amount must be a decimal number",
            AmountError::NotPositive => "amount must be greater than zero",
            AmountError::TooPrecise => "amount must have at most 2 decimal places",
            AmountError::TooLarge => "amount is above the maximum of 1000000000.00",
            AmountError::Exponent => "amount must be written without an exponent",
        }
    }
}

/// Parses a JSON number's text into cents.
pub fn parse_cents(text: &str) -> Result<u64, AmountError> {
    let t = text.trim();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Err(AmountError::NotANumber);
    }
    if t.contains(['e', 'E']) {
        return Err(AmountError::Exponent);
    }
    let d = match Decimal::from_str_exact(t) {
        Ok(d) => d.normalize(),
        Err(_) => {
            // A well-formed number that rust_decimal cannot hold (more than 28 digits) is too
            // large or too precise; anything else is not a number.
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
            let plain = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty() || !plain(whole) || !plain(frac) {
                return Err(AmountError::NotANumber);
            }
            return Err(if whole.trim_start_matches('0').len() > 12 {
                AmountError::TooLarge
            } else {
                AmountError::TooPrecise
            });
        }
    };
    if d <= Decimal::ZERO {
        return Err(AmountError::NotPositive);
    }
    if d.scale() > 2 {
        return Err(AmountError::TooPrecise);
    }
    // checked: a 28-digit whole number fits a Decimal but not a hundred times it (found by
    // the payment_json fuzz target; `*` panics there).
    let cents = d
        .checked_mul(Decimal::ONE_HUNDRED)
        .and_then(|c| c.to_u64())
        .ok_or(AmountError::TooLarge)?;
    if cents > MAX_CENTS {
        return Err(AmountError::TooLarge);
    }
    Ok(cents)
}

/// `cents` as a decimal with exactly two places, e.g. `2005` -> `20.05`.
pub fn format_cents(cents: u64) -> String {
    let mut s = String::with_capacity(24);
    push_cents(&mut s, cents);
    s
}

/// Appends `cents` as a decimal with two places to `out`.
pub fn push_cents(out: &mut String, cents: u64) {
    use std::fmt::Write;
    let _ = write!(out, "{}.{:02}", cents / 100, cents % 100);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_28_digit_amount_is_too_large_not_a_panic() {
        assert_eq!(
            parse_cents("9999999999000004073709551614"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_cents("7922816251426433759354395033"),
            Err(AmountError::TooLarge)
        );
    }
    use proptest::prelude::*;

    #[test]
    fn accepts_exact_amounts() {
        assert_eq!(parse_cents("20.05"), Ok(2005));
        assert_eq!(parse_cents("20.050"), Ok(2005));
        assert_eq!(parse_cents("1"), Ok(100));
        assert_eq!(parse_cents("0.01"), Ok(1));
        assert_eq!(parse_cents("1000000000.00"), Ok(MAX_CENTS));
    }

    #[test]
    fn refuses_bad_amounts() {
        assert_eq!(parse_cents("0"), Err(AmountError::NotPositive));
        assert_eq!(parse_cents("0.00"), Err(AmountError::NotPositive));
        assert_eq!(parse_cents("-1.00"), Err(AmountError::NotPositive));
        assert_eq!(parse_cents("20.051"), Err(AmountError::TooPrecise));
        assert_eq!(parse_cents("1000000000.01"), Err(AmountError::TooLarge));
        assert_eq!(
            parse_cents("99999999999999999999999999999999"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_cents("0.00000000000000000000000000000001"),
            Err(AmountError::TooPrecise)
        );
        for e in ["1e3", "2.005e1", "1E2", "1e40", "1e-2"] {
            assert_eq!(parse_cents(e), Err(AmountError::Exponent), "{e}");
        }
        for bad in [
            "",
            "abc",
            "\"20.05\"",
            "NaN",
            "Infinity",
            "1.2.3",
            "--1",
            "true",
            "null",
        ] {
            assert_eq!(parse_cents(bad), Err(AmountError::NotANumber), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(cents in 1u64..=MAX_CENTS) {
            prop_assert_eq!(parse_cents(&format_cents(cents)), Ok(cents));
        }
    }
}
