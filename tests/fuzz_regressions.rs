//! The fuzz targets (`rctdb::wire::fuzz`) on every input a fuzzer ever crashed them with,
//! and a short run of the stable mutation fuzzer from the seed corpus of each target.
//!
//! `scripts/fuzz.sh` runs the long version: `fuzz_for_a_while` below (ignored here) or
//! `cargo fuzz`. A crash it finds goes into tests/fuzz_corpus/<target>/ and stays there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rctdb::wire::fuzz::{runner, seeds::seeds, target, TARGETS};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

/// Every saved input of every target: none may panic.
#[test]
fn saved_crashes_stay_fixed() {
    let mut count = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(corpus_dir().join(name)) else { continue };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run(&input);
            count += 1;
        }
    }
    assert!(count > 0, "the saved inputs in {} were not found", corpus_dir().display());
}

/// Every seed decodes: a seed the decoder refuses would start the fuzzers off in the wrong
/// place (and mean an encoder and its decoder disagree).
#[test]
fn every_seed_is_accepted() {
    for (name, run) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has seeds");
        for seed in seeds {
            assert!(run(&seed), "{name}: seed {seed:02x?} refused");
        }
    }
}

/// A few seconds of mutation fuzzing per run of the test suite, from a fixed seed so that a
/// failure repeats.
#[test]
fn short_stable_fuzz_run_finds_nothing() {
    let budget = runner::Budget { execs: 20_000, time: Duration::from_millis(400) };
    for (name, run) in TARGETS {
        let report = runner::run(*run, seeds(name), 0x5eed, budget);
        if let Some(crash) = &report.crash {
            panic!("{name} crashed on {:02x?}: {}", crash.input, crash.message);
        }
        assert!(report.execs > 500, "{name}: only {} runs", report.execs);
        assert!(report.corpus > seeds(name).len() / 2, "{name}: mutants were accepted too");
    }
}

/// The runner finds a planted bug (a panic on a frame shorter than a header whose length
/// field says 4 GiB) and hands back the input that caused it.
#[test]
fn the_runner_reports_a_crash_with_its_input() {
    fn planted(bytes: &[u8]) -> bool {
        assert!(!(bytes.len() < 32 && bytes.starts_with(&u32::MAX.to_le_bytes())), "planted bug");
        !bytes.is_empty()
    }
    let seeds = vec![vec![0u8; 32]];
    let report =
        runner::run(planted, seeds, 7, runner::Budget { execs: 1_000_000, time: Duration::from_secs(5) });
    let crash = report.crash.expect("the planted bug is found");
    assert!(crash.input.len() < 32 && crash.input.starts_with(&[0xff; 4]), "{:02x?}", crash.input);
    assert!(crash.message.contains("planted bug"), "{}", crash.message);
}

/// The stable fuzzer for a while: `FUZZ_SECONDS` per target (default 60), the targets in
/// `FUZZ_TARGETS` (comma separated; default all), crashing inputs saved to `FUZZ_ARTIFACTS`
/// (default target/fuzz-artifacts). `scripts/fuzz.sh` runs this when cargo fuzz cannot.
#[test]
#[ignore = "long: run by scripts/fuzz.sh"]
fn fuzz_for_a_while() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let names: Vec<String> = match std::env::var("FUZZ_TARGETS") {
        Ok(list) if !list.is_empty() => list.split(',').map(str::to_owned).collect(),
        _ => TARGETS.iter().map(|(name, _)| name.to_string()).collect(),
    };
    let artifacts = std::env::var_os("FUZZ_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-artifacts"));
    let rng_seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut crashed = vec![];
    for name in &names {
        let run = target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
        let budget = runner::Budget { execs: u64::MAX, time: Duration::from_secs(seconds) };
        let report = runner::run(run, seeds(name), rng_seed, budget);
        println!(
            "{name}: {} execs in {:.1} s ({:.0}/s), {} accepted, corpus {}, seed {rng_seed:#x}",
            report.execs,
            report.elapsed.as_secs_f64(),
            report.execs_per_second(),
            report.accepted,
            report.corpus
        );
        if let Some(crash) = report.crash {
            std::fs::create_dir_all(&artifacts).expect("artifacts directory");
            let path = artifacts.join(format!("{name}-crash-{:016x}", fnv1a(&crash.input)));
            std::fs::write(&path, &crash.input).expect("save the crashing input");
            println!("{name}: CRASH: {}\n  input saved to {}", crash.message, path.display());
            crashed.push(name.clone());
        }
    }
    assert!(crashed.is_empty(), "crashed: {crashed:?}");
}

/// Writes every target's seeds to `FUZZ_CORPUS/<target>/` for libFuzzer to start from.
#[test]
#[ignore = "run by scripts/fuzz.sh"]
fn export_seeds() {
    let dir = PathBuf::from(std::env::var_os("FUZZ_CORPUS").expect("FUZZ_CORPUS: where to write the seeds"));
    for (name, _) in TARGETS {
        let target_dir = dir.join(name);
        std::fs::create_dir_all(&target_dir).expect("corpus directory");
        for seed in seeds(name) {
            std::fs::write(target_dir.join(format!("seed-{:016x}", fnv1a(&seed))), &seed)
                .expect("write a seed");
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
