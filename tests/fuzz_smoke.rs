//! A short, seeded run of every fuzz target (src/fuzz.rs) inside the normal
//! test suite: the seed corpus in fuzz/corpus/<target>/ and a fixed number
//! of deterministic mutations of it, so a change that makes an input path
//! panic or hang is caught without libFuzzer. The long runs are fuzz/run.sh.

use std::time::{Duration, Instant};

/// A small xorshift generator: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Values that found bugs before: int64 and quantity extremes, nesting.
const SPLICES: &[&[u8]] = &[
    b"9223372036854775807",
    b"-9223372036854775808",
    b"359999999880",
    b"5Ei",
    b"1e11",
    b"8Ei",
    b"100000000h",
    b"[[[[[[[[[[[[[[[[",
    b"{a: &a [*a]}",
    b"\xff\xfe",
    b"\n- ",
    b": ",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let s = SPLICES[rng.below(SPLICES.len())];
                v.splice(at..at, s.iter().copied());
            }
            4 => {
                // Replace a run of digits with an extreme number.
                if let Some(start) = v.iter().skip(at).position(u8::is_ascii_digit).map(|p| p + at) {
                    let end = v[start..].iter().position(|b| !b.is_ascii_digit()).map_or(v.len(), |p| p + start);
                    let s = SPLICES[rng.below(3)];
                    v.splice(start..end, s.iter().copied());
                }
            }
            _ if !v.is_empty() => {
                let from = rng.below(v.len());
                let end = (from + 1 + rng.below(64)).min(v.len());
                let chunk = v[from..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    out.push(Vec::new());
    out
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_seeded_mutations() {
    const MUTATIONS: usize = 3000;
    for (name, target) in nodelet::fuzz::TARGETS {
        let corpus = seeds(name);
        assert!(corpus.len() > 1, "{name}: no seed corpus");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let started = Instant::now();
        let mut slowest = (Duration::ZERO, Vec::new());
        let inputs = corpus.iter().cloned().chain((0..MUTATIONS).map(|i| {
            let seed = &corpus[i % corpus.len()];
            mutate(&mut rng, seed)
        }));
        for input in inputs {
            let t = Instant::now();
            target(&input);
            if t.elapsed() > slowest.0 {
                slowest = (t.elapsed(), input);
            }
        }
        assert!(
            slowest.0 < Duration::from_secs(1),
            "{name}: an input took {:?} (over 1 s): {:?}",
            slowest.0,
            String::from_utf8_lossy(&slowest.1[..slowest.1.len().min(200)])
        );
        eprintln!("{name}: {} inputs in {:?}, slowest {:?}", corpus.len() + MUTATIONS, started.elapsed(), slowest.0);
    }
}
