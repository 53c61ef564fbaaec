//! ISO-8601 UTC instants <-> milliseconds since the epoch, without allocation.
//!
//! Owns the one time format of the contest: `2025-07-10T12:34:56.000Z`. [`parse_ms`] also
//! takes no fraction or 1 to 9 fraction digits (truncated to ms) and a `+hh:mm`/`-hh:mm`
//! offset; anything else is `None`. [`format_ms`] always writes 24 bytes with milliseconds.
//!
//! ```
//! use rinha::iso8601::{format_ms, parse_ms};
//! let ms = parse_ms("2025-07-10T12:34:56.789Z").unwrap();
//! assert_eq!(ms, 1_752_150_896_789);
//! let mut buf = [0u8; 24];
//! assert_eq!(format_ms(ms, &mut buf), "2025-07-10T12:34:56.789Z");
//! ```

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn num(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an ISO-8601 instant into ms since the epoch.
pub fn parse_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, se) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let frac = &rest[1..1 + digits];
        millis = (0..3).fold(0, |acc, i| {
            acc * 10 + frac.get(i).map_or(0, |c| i64::from(c - b'0'))
        });
        rest = &rest[1 + digits..];
    }
    let offset_min = match rest {
        [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = num(&[*h1, *h2])?;
            let om = num(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 60 + om;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Writes `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` into `buf` and returns it as text.
pub fn format_ms(ms: i64, buf: &mut [u8; 24]) -> &str {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let put = |buf: &mut [u8; 24], at: usize, v: i64, width: usize| {
        let mut v = v.clamp(0, 9999);
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(buf, 0, y, 4);
    buf[4] = b'-';
    put(buf, 5, m, 2);
    buf[7] = b'-';
    put(buf, 8, d, 2);
    buf[10] = b'T';
    put(buf, 11, sod / 3600, 2);
    buf[13] = b':';
    put(buf, 14, sod % 3600 / 60, 2);
    buf[16] = b':';
    put(buf, 17, sod % 60, 2);
    buf[19] = b'.';
    put(buf, 20, millis, 3);
    buf[23] = b'Z';
    std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("1970-01-01T00:00:00.001Z"), Some(1));
        assert_eq!(parse_ms("2000-02-29T23:59:59.999Z"), Some(951_868_799_999));
        assert_eq!(
            parse_ms("2025-07-10T12:34:56.000+01:00"),
            parse_ms("2025-07-10T11:34:56.000Z")
        );
        assert_eq!(
            parse_ms("2025-07-10T12:34:56.123456789Z"),
            parse_ms("2025-07-10T12:34:56.123Z")
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2025-07-10",
            "2025-07-10T12:34:56",
            "2025-13-10T12:34:56Z",
            "2025-02-30T12:34:56Z",
            "2025-07-10T24:00:00Z",
            "2025-07-10T12:34:56.Z",
            "2025-07-10 12:34:56Z",
            "abcd-07-10T12:34:56Z",
            "2025-07-10T12:34:56.000ZZ",
            "2025-07-10T12:34:56+0100",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0i64..253_402_300_799_999) {
            let mut buf = [0u8; 24];
            let text = format_ms(ms, &mut buf).to_string();
            prop_assert_eq!(parse_ms(&text), Some(ms));
        }
    }
}
