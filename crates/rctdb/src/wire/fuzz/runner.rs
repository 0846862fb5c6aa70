//! A mutation fuzzer the stable toolchain runs: no coverage instrumentation, but mutations
//! that know the packet layout (length fields, operation and opcode numbers, counts) and a
//! corpus that keeps every mutant the target accepted, so runs go deeper than random bytes.
//! `cargo fuzz` (fuzz/) does the same with libFuzzer's coverage guidance where nightly
//! features are available.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::Target;
use crate::wire::{op, MAX_PACKET_LEN};

/// How long a run goes on: whichever limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub execs: u64,
    pub time: Duration,
}

/// A panic in the target, with the input that caused it.
#[derive(Debug, Clone)]
pub struct Crash {
    pub input: Vec<u8>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub execs: u64,
    /// Inputs the target decoded to something.
    pub accepted: u64,
    pub corpus: usize,
    pub elapsed: Duration,
    /// The first crash; the run stops there.
    pub crash: Option<Crash>,
}

impl Report {
    pub fn execs_per_second(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Mutants grow no larger than this: the decoders' limits are far above, and small inputs
/// run faster.
const MAX_INPUT: usize = 8 << 10;
const MAX_CORPUS: usize = 10_000;

/// Runs `target` on the seeds, then on mutants of the corpus, until the budget is spent or
/// the target panics. `rng_seed` makes a run repeatable.
pub fn run(target: Target, seeds: Vec<Vec<u8>>, rng_seed: u64, budget: Budget) -> Report {
    let start = Instant::now();
    let mut rng = Rng(rng_seed | 1);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut report = Report { execs: 0, accepted: 0, corpus: 0, elapsed: Duration::ZERO, crash: None };
    let mut pending = seeds;
    pending.push(vec![]);
    loop {
        let input = match pending.pop() {
            Some(seed) => seed,
            None => mutant(&corpus, &mut rng),
        };
        report.execs += 1;
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(true) => {
                report.accepted += 1;
                if seen.insert(input.clone()) {
                    keep(&mut corpus, input, &mut rng);
                }
            }
            Ok(false) => {
                if corpus.is_empty() {
                    corpus.push(input); // something to mutate even if no seed decodes
                }
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic with a non-string payload".into());
                report.crash = Some(Crash { input, message });
                break;
            }
        }
        if report.execs >= budget.execs || (report.execs % 256 == 0 && start.elapsed() >= budget.time) {
            break;
        }
    }
    report.corpus = corpus.len();
    report.elapsed = start.elapsed();
    report
}

fn keep(corpus: &mut Vec<Vec<u8>>, input: Vec<u8>, rng: &mut Rng) {
    if corpus.len() < MAX_CORPUS {
        corpus.push(input);
    } else {
        let at = rng.below(corpus.len());
        corpus[at] = input;
    }
}

/// A corpus entry with one to four mutations.
fn mutant(corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut input = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        mutate(&mut input, corpus, rng);
    }
    input.truncate(MAX_INPUT);
    input
}

fn mutate(b: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    match rng.below(12) {
        0 if !b.is_empty() => {
            let at = rng.below(b.len());
            b[at] ^= 1 << rng.below(8);
        }
        1 if !b.is_empty() => {
            let at = rng.below(b.len());
            let random = rng.next() as u8;
            b[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, random]);
        }
        2 => {
            let at = rng.below(b.len() + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(at..at, bytes);
        }
        3 if !b.is_empty() => {
            let at = rng.below(b.len());
            let end = (at + 1 + rng.below(16)).min(b.len());
            b.drain(at..end);
        }
        4 => {
            let at = rng.below(b.len() + 1);
            b.truncate(at);
        }
        5 => {
            // A length, count or id field: any aligned u32 of the body.
            let at = 4 * rng.below(b.len() / 4 + 1);
            let value = interesting_u32(b.len(), rng);
            put_u32(b, at, value);
        }
        6 => {
            // The frame's length field: near the truth, or a lie.
            let len = b.len() as u32;
            let value = match rng.below(3) {
                0 => len,
                1 => len.wrapping_add(rng.below(17) as u32).wrapping_sub(8),
                _ => interesting_u32(b.len(), rng),
            };
            put_u32(b, 0, value);
        }
        7 => {
            // The operation (header offset 16) or a control's opcode (offset 32), or the
            // first u32 of a payload (a cluster message's kind).
            let at = *rng.pick(&[16, 32, 0]);
            let value = *rng.pick(KNOWN_NUMBERS);
            put_u32(b, at, value);
        }
        8 if !corpus.is_empty() => {
            // Splice: this input's head, another's tail.
            let other = &corpus[rng.below(corpus.len())];
            let head = rng.below(b.len() + 1);
            let tail = rng.below(other.len() + 1);
            b.truncate(head);
            b.extend_from_slice(&other[tail..]);
        }
        9 if !b.is_empty() => {
            let from = rng.below(b.len());
            let chunk: Vec<u8> = b[from..(from + 1 + rng.below(32)).min(b.len())].to_vec();
            let at = rng.below(b.len() + 1);
            b.splice(at..at, chunk);
        }
        10 if !corpus.is_empty() => {
            // Another frame after this one, as on a stream.
            b.extend_from_slice(&corpus[rng.below(corpus.len())]);
        }
        _ => {
            let len = b.len() as u32;
            put_u32(b, 0, len);
        }
    }
}

/// Operation numbers, control opcodes and cluster message kinds the decoders branch on.
const KNOWN_NUMBERS: &[u32] = &[
    op::REQ_CALL,
    op::REPLY_CALL,
    op::REQ_DMASTER,
    op::REPLY_DMASTER,
    op::REPLY_ERROR,
    op::REQ_MESSAGE,
    6,
    op::REQ_CONTROL,
    op::REPLY_CONTROL,
    op::REQ_KEEPALIVE,
    op::REQ_TUNNEL,
    op::CLUSTER,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    0x7c00_0001,
    0x7c00_0003,
    0x7c00_0004,
    0x7c00_0005,
    0x7c00_0006,
    0x7c00_0007,
    24,
    26,
    30,
    44,
    48,
    49,
    50,
    61,
    119,
    120,
    128,
    129,
    131,
    149,
    150,
    151,
];

fn interesting_u32(len: usize, rng: &mut Rng) -> u32 {
    let len = len as u32;
    let random = rng.next() as u32;
    *rng.pick(&[
        0,
        1,
        2,
        4,
        8,
        24,
        32,
        0x7f,
        0x80,
        0xff,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
        u32::MAX - 3,
        len,
        len.wrapping_add(1),
        len.wrapping_sub(1),
        len.wrapping_sub(32),
        MAX_PACKET_LEN as u32,
        MAX_PACKET_LEN as u32 + 1,
        crate::wire::CTDB_MAGIC,
        random,
    ])
}

/// Writes `value` at `at`, growing the buffer when it is too short.
fn put_u32(b: &mut Vec<u8>, at: usize, value: u32) {
    if b.len() < at + 4 {
        b.resize(at + 4, 0);
    }
    b[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// xorshift64*: fast, and the same sequence for the same seed on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
