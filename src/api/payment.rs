//! Decoding the body of `POST /payments` into a [`Payment`], exactly and without `f64`.
//!
//! Contract: [`decode`] accepts a JSON object with `correlationId` (a UUID string, any of the
//! forms `uuid` parses: hyphenated, simple, braced, urn) and `amount` (a JSON number, see
//! [`crate::money`]); other fields are ignored. Everything else is a [`BadPayment`] whose
//! message is safe to embed in a JSON string.
//!
//! ```
//! use rinha::api::payment::decode;
//! let p = decode(br#"{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","amount":19.9}"#, 7).unwrap();
//! assert_eq!(p.cents, 1990);
//! assert_eq!(p.received_at_ms, 7);
//! ```
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::money::{self, AmountError};
use crate::shm::Payment;

/// Why a payment body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPayment {
    /// Not a JSON object of the right shape.
    Json,
    /// No correlationId.
    MissingId,
    /// correlationId is not a UUID string.
    Id,
    /// No amount.
    MissingAmount,
    /// The amount is refused.
    Amount(AmountError),
}

impl BadPayment {
    /// A short message for the 400's JSON body.
    pub fn message(self) -> &'static str {
        match self {
            BadPayment::Json => "body must be a JSON object with correlationId and amount",
            BadPayment::MissingId => "correlationId is required",
            BadPayment::Id => "correlationId must be a UUID string",
            BadPayment::MissingAmount => "amount is required",
            BadPayment::Amount(e) => e.message(),
        }
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "correlationId", borrow, default)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
}

/// Decodes a payment received at `now_ms`.
pub fn decode(body: &[u8], now_ms: i64) -> Result<Payment, BadPayment> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BadPayment::Json); // serde would also take a JSON array for a struct
    }
    let b: Body<'_> = serde_json::from_slice(body).map_err(|_| BadPayment::Json)?;
    let raw_id = b.correlation_id.ok_or(BadPayment::MissingId)?.get();
    let raw_amount = b.amount.ok_or(BadPayment::MissingAmount)?.get();
    // The id must be a JSON string without escapes (a UUID never needs one).
    let id_text = raw_id
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|s| !s.contains('\\'))
        .ok_or(BadPayment::Id)?;
    let id = uuid::Uuid::try_parse(id_text).map_err(|_| BadPayment::Id)?;
    if raw_amount == "null" {
        return Err(BadPayment::MissingAmount);
    }
    let cents = money::parse_cents(raw_amount).map_err(BadPayment::Amount)?;
    Ok(Payment {
        id: *id.as_bytes(),
        cents,
        received_at_ms: now_ms,
        ..Payment::default()
    })
}

/// The body of the fuzz target over the payment decoder (`fuzz/fuzz_targets/payment_json.rs`,
/// and `tests/fuzz_corpus.rs` on stable); panics if a promise breaks:
/// - a refusal's message is non-empty and safe to embed in a JSON string;
/// - an accepted payment has at least one cent, and writing it back as JSON (hyphenated id,
///   amount with two decimals) decodes to the same id and cents.
#[doc(hidden)]
pub fn fuzz_check(body: &[u8]) {
    match decode(body, 0) {
        Err(e) => {
            let m = e.message();
            assert!(!m.is_empty() && !m.contains(['"', '\\']), "{m:?}");
        }
        Ok(p) => {
            assert!(p.cents >= 1, "accepted {} cents", p.cents);
            let again = format!(
                r#"{{"correlationId":"{}","amount":{}.{:02}}}"#,
                uuid::Uuid::from_bytes(p.id).hyphenated(),
                p.cents / 100,
                p.cents % 100
            );
            let q = decode(again.as_bytes(), 0).expect("a payment written back decodes");
            assert_eq!((q.id, q.cents), (p.id, p.cents), "{again}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";

    #[test]
    fn decodes_the_contest_body() {
        let body = format!(r#"{{"correlationId":"{ID}","amount":20.05}}"#);
        let p = decode(body.as_bytes(), 1).unwrap();
        assert_eq!(p.cents, 2005);
        assert_eq!(uuid::Uuid::from_bytes(p.id).to_string(), ID);
        assert_eq!(p.attempts, 0);
    }

    #[test]
    fn refuses_each_bad_input() {
        let cases: &[(&str, BadPayment)] = &[
            ("", BadPayment::Json),
            ("[]", BadPayment::Json),
            ("{", BadPayment::Json),
            (r#"{"amount":1}"#, BadPayment::MissingId),
            (
                &format!(r#"{{"correlationId":"{ID}"}}"#),
                BadPayment::MissingAmount,
            ),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":null}}"#),
                BadPayment::MissingAmount,
            ),
            (r#"{"correlationId":"nope","amount":1}"#, BadPayment::Id),
            (r#"{"correlationId":12,"amount":1}"#, BadPayment::Id),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":"20.05"}}"#),
                BadPayment::Amount(AmountError::NotANumber),
            ),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":0}}"#),
                BadPayment::Amount(AmountError::NotPositive),
            ),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":-5}}"#),
                BadPayment::Amount(AmountError::NotPositive),
            ),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":1.001}}"#),
                BadPayment::Amount(AmountError::TooPrecise),
            ),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":1e400}}"#),
                BadPayment::Amount(AmountError::Exponent),
            ),
            (
                &format!(r#"{{"correlationId":"{ID}","amount":true}}"#),
                BadPayment::Amount(AmountError::NotANumber),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(decode(body.as_bytes(), 0), Err(*want), "{body}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&body, 0);
        }

        #[test]
        fn any_valid_amount_round_trips(cents in 1u64..=crate::money::MAX_CENTS) {
            let body = format!(r#"{{"correlationId":"{ID}","amount":{}}}"#, crate::money::format_cents(cents));
            prop_assert_eq!(decode(body.as_bytes(), 0).map(|p| p.cents), Ok(cents));
        }
    }
}
