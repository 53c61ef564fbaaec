// The contest's score (../shared/rinha-2025.md, section 5) in exact integer arithmetic, so that
// it agrees to the cent with the Rust recomputation (src/contest/score.rs, rust_decimal):
//   score = (Σ amount − Σ amount × fee) × (1 + bonus − fine)
//   bonus = max(round2((11 − round2(p99_ms)) × 0.02), 0), fine = 0.35 if any inconsistency.
// Rounding is half away from zero (every value rounded here is positive). Decimal values read
// from JSON numbers are taken at their shortest decimal text (what String() gives), which is also
// what the Rust side parses, so a p99 of 2.555 rounds to 2.56 on both sides, not to 2.55 as
// Math.round(2.555 * 100) would.

// Decimal text of a non-negative number to an integer count of 10^-places units, half up.
export function scaled(x, places) {
  const s = String(x);
  if (s.startsWith('-')) {
    throw new Error(`negative value ${s}`);
  }
  if (s.includes('e')) {
    // Tiny or huge: no exact text to round; outside anything the contest produces.
    return Math.round(x * 10 ** places);
  }
  const [whole, frac = ''] = s.split('.');
  const digits = (frac + '0'.repeat(places + 1)).slice(0, places + 1);
  let units = parseInt(whole, 10) * 10 ** places + parseInt(digits.slice(0, places) || '0', 10);
  if (digits.charCodeAt(places) >= 53 /* '5' */) {
    units += 1;
  }
  return units;
}

// Exact cents of an amount such as 1061552.25 (a processor's totalAmount).
export function cents(amount) {
  return scaled(amount, 2);
}

// f: { defaultCents, fallbackCents, defaultFee, fallbackFee, p99Ms, inconsistencies }.
// Returns every intermediate figure; money in integer cents.
export function scoreOf(f) {
  const p99Hundredths = scaled(f.p99Ms, 2);
  const n = 1100 - p99Hundredths; // (11 - p99) in hundredths of a ms
  // round2(n / 100 * 0.02) = round(n / 50) hundredths, half up; negative -> 0.
  const bonusHundredths = n > 0 ? Math.floor((n + 25) / 50) : 0;
  const fineHundredths = f.inconsistencies > 0 ? 35 : 0;
  const dBp = scaled(f.defaultFee, 4); // fee in basis points
  const fBp = scaled(f.fallbackFee, 4);
  // Net in 10^-4 cents: at most ~2e8 cents x 1e4 = 2e12, times 121 below 2^53.
  const netUnits = f.defaultCents * (10000 - dBp) + f.fallbackCents * (10000 - fBp);
  const feeUnits = f.defaultCents * dBp + f.fallbackCents * fBp;
  const mult = 100 + bonusHundredths - fineHundredths;
  const scoreCents = divRound(netUnits * mult, 1000000);
  return {
    p99Hundredths,
    bonusHundredths,
    fineHundredths,
    grossCents: f.defaultCents + f.fallbackCents,
    feeCents: divRound(feeUnits, 10000),
    netCents: divRound(netUnits, 10000),
    scoreCents,
  };
}

// Integer a / b rounded half up, for non-negative integers (a exact below 2^53).
function divRound(a, b) {
  if (a < 0) {
    return -divRound(-a, b);
  }
  const q = Math.floor(a / b);
  const r = a - q * b;
  return 2 * r >= b ? q + 1 : q;
}
