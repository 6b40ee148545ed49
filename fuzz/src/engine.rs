//! The mutation engine: seed inputs changed a little at a time, as AFL's havoc stage does
//! (byte flips, inserted and deleted runs, duplicated runs, interesting tokens, splices of two
//! seeds, truncation), from a seeded xorshift generator so that every case can be replayed.

/// A small, seeded generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is moved off the fixed point).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Tokens worth inserting into text formats.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"0x",
    b"0xffffffffffffffff",
    b"18446744073709551615",
    b"9223372036854775808",
    b"1e999",
    b"255",
    b"256",
    b"65536",
    b"4294967296",
    b"\"",
    b"'",
    b"=",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"{",
    b"}",
    b",",
    b".",
    b"\n",
    b"\n[[step]]\n",
    b"\n[[device]]\n",
    b"\n[[unit]]\n",
    b"true",
    b"false",
    b"\"\"",
    b"\xff\xfe",
    b"\\u0000",
    b"#",
    b"inf",
    b"nan",
    b"\"0000:ff:1f.7\"",
    b"\"512M\"",
    b"\"64T\"",
];

/// How many mutations a case applies at most.
const MAX_STACK: usize = 8;
/// Largest input a case may grow to.
pub const MAX_INPUT: usize = 64 << 10;

/// A new input from `seeds`: one seed, changed by a few mutations.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds.get(rng.below(seeds.len())).cloned().unwrap_or_default();
    for _ in 0..1 + rng.below(MAX_STACK) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next_u64() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let run: Vec<u8> = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, run);
            }
            5 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, t.iter().copied());
            }
            6 if len > 0 => {
                // A 64-bit value written over the input (binary formats).
                let i = rng.below(len);
                let v = [0u64, u64::MAX, 1 << 63, 0xfff, 0x1000, rng.next_u64()][rng.below(6)].to_le_bytes();
                let n = v.len().min(len - i);
                data[i..i + n].copy_from_slice(&v[..n]);
            }
            7 if !seeds.is_empty() => {
                // Splice: the head of this input and the tail of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => data.truncate(rng.below(len)),
            _ => {}
        }
        data.truncate(MAX_INPUT);
    }
    data
}

/// What a run found.
#[derive(Debug)]
pub struct Run {
    /// Cases run.
    pub cases: u64,
    /// Inputs the target accepted (the rest it refused with an error).
    pub accepted: u64,
    /// The first input that made the target panic, with the panic message.
    pub failure: Option<(Vec<u8>, String)>,
    /// Wall time.
    pub seconds: f64,
}

/// Runs `one` on `cases` inputs mutated from `seeds`, from `seed`, until the first panic.
pub fn run(seeds: &[Vec<u8>], cases: u64, seed: u64, one: fn(&[u8]) -> bool) -> Run {
    let started = std::time::Instant::now();
    let mut rng = Rng::new(seed);
    let mut accepted = 0;
    // The target's panics are the findings: keep them off stderr while running.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    let mut n = 0;
    while n < cases {
        let input = if n < seeds.len() as u64 { seeds[n as usize].clone() } else { mutate(&mut rng, seeds) };
        n += 1;
        match std::panic::catch_unwind(|| one(&input)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failure = Some((input, msg));
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    Run { cases: n, accepted, failure, seconds: started.elapsed().as_secs_f64() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_is_replayable_and_bounded() {
        let seeds = vec![b"a = 1\n".to_vec(), vec![0u8; 100]];
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = mutate(&mut a, &seeds);
            assert_eq!(x, mutate(&mut b, &seeds));
            assert!(x.len() <= MAX_INPUT);
        }
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        fn one(b: &[u8]) -> bool {
            assert!(!b.contains(&b'Z'), "found Z");
            true
        }
        let r = run(&[b"abc".to_vec()], 100_000, 1, one);
        let (input, msg) = r.failure.expect("some mutation inserts a Z");
        assert!(input.contains(&b'Z') && msg.contains("found Z"));
        assert!(r.cases < 100_000);
    }
}
