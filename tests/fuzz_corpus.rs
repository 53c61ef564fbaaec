//! The fuzz targets on stable, bounded for CI (issue 6): every input of the committed corpus
//! (`fuzz/corpus/<target>/`, seeded by hand with the hostile cases and grown by
//! `cargo +nightly fuzz run`) goes through the target's checks, then proptest mutates corpus
//! inputs (byte flips, insertions, deletions, splices of two inputs) for a fixed number of
//! cases. The checks themselves are `rinha::http::fuzz::request` and
//! `rinha::api::payment::fuzz_check`, the same bodies the cargo-fuzz targets run.
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    // The hand-written seeds alone are 27 and 35 inputs: a corpus that lost them is a defect.
    assert!(
        inputs.len() >= 25,
        "corpus {} has only {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

static HTTP: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
static PAYMENT: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

fn cached<'a>(cell: &'a OnceLock<Vec<Vec<u8>>>, target: &str) -> &'a [Vec<u8>] {
    cell.get_or_init(|| corpus(target))
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    /// Appends a piece of another corpus input.
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Set(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), any::<usize>(), 1usize..128)
            .prop_map(|(i, a, n)| Mutation::Splice(i, a, n)),
    ]
}

fn mutate(corpus: &[Vec<u8>], pick: usize, muts: &[Mutation]) -> Vec<u8> {
    let mut v = corpus[pick % corpus.len()].clone();
    for m in muts {
        match *m {
            Mutation::Set(at, b) if !v.is_empty() => {
                let n = v.len();
                v[at % n] = b;
            }
            Mutation::Set(..) => v.push(0),
            Mutation::Insert(at, b) => {
                let at = at % (v.len() + 1);
                v.insert(at, b);
            }
            Mutation::Delete(at, n) if !v.is_empty() => {
                let at = at % v.len();
                let end = (at + n).min(v.len());
                v.drain(at..end);
            }
            Mutation::Delete(..) => {}
            Mutation::Splice(other, at, n) => {
                let o = &corpus[other % corpus.len()];
                if !o.is_empty() {
                    let at = at % o.len();
                    v.extend_from_slice(&o[at..(at + n).min(o.len())]);
                }
            }
        }
    }
    v
}

#[test]
fn http_request_corpus_replays() {
    for input in corpus("http_request") {
        rinha::http::fuzz::request(&input);
    }
}

#[test]
fn payment_json_corpus_replays() {
    for input in corpus("payment_json") {
        rinha::api::payment::fuzz_check(&input);
    }
}

/// The corpus must keep the inputs that reach each kind of outcome (a replay of inputs that all
/// fail the same way would check little).
#[test]
fn corpora_reach_every_outcome() {
    let mut codes = std::collections::BTreeSet::new();
    let mut handled = 0;
    for input in corpus("http_request") {
        let (seen, code) = rinha::http::fuzz::drive(&input, &[]);
        handled += seen.len();
        codes.extend(code);
    }
    assert!(handled >= 5, "only {handled} requests parsed in the corpus");
    for want in [400, 413, 431, 501] {
        assert!(
            codes.contains(&want),
            "no corpus input is refused with {want}: {codes:?}"
        );
    }
    let (mut ok, mut refused) = (0, 0);
    for input in corpus("payment_json") {
        match rinha::api::payment::decode(&input, 0) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(ok >= 5 && refused >= 10, "{ok} accepted, {refused} refused");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_http_requests_keep_the_parser_promises(
        pick in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let c = cached(&HTTP, "http_request");
        rinha::http::fuzz::request(&mutate(c, pick, &muts));
    }

    #[test]
    fn mutated_payment_bodies_keep_the_decoder_promises(
        pick in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let c = cached(&PAYMENT, "payment_json");
        rinha::api::payment::fuzz_check(&mutate(c, pick, &muts));
    }
}
