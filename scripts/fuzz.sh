#!/usr/bin/env bash
# Fuzzes every decoder target (crates/rctdb/src/wire/fuzz) for a bounded time each, and fails on a crash.
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET]          (default 60)
#   FUZZ_ENGINE=libfuzzer|stable ./scripts/fuzz.sh  (default: libfuzzer when cargo fuzz
#                                                    builds, else the stable runner)
#   FUZZ_TARGETS=wire_packet,cluster_msg ./scripts/fuzz.sh 10
# libFuzzer keeps its corpus in fuzz/corpus/<target>/ and a crashing input in
# fuzz/artifacts/<target>/; the stable runner saves one to target/fuzz-artifacts/. Copy it
# to tests/fuzz_corpus/<target>/ once the decoder is fixed: tests/fuzz_regressions.rs
# replays every file there.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
engine=${FUZZ_ENGINE:-auto}
all_targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^rctdb-fuzz$')
targets=${FUZZ_TARGETS:-$(echo $all_targets | tr ' ' ',')}

# cargo fuzz needs nightly flags; the stable toolchain takes them with RUSTC_BOOTSTRAP=1.
# No sanitizer: the targets are safe Rust, and without one the build is faster.
libfuzzer() {
    RUSTC_BOOTSTRAP=1 cargo fuzz "$1" --fuzz-dir fuzz --sanitizer none "${@:2}"
}

if [ "$engine" = auto ]; then
    engine=stable
    if cargo fuzz --version >/dev/null 2>&1; then
        echo "building the libFuzzer targets (cargo fuzz)..."
        if libfuzzer build >/tmp/rctdb-fuzz-build.log 2>&1; then
            engine=libfuzzer
        else
            echo "cargo fuzz build failed (see /tmp/rctdb-fuzz-build.log): using the stable runner"
        fi
    else
        echo "cargo fuzz is not installed (cargo install cargo-fuzz): using the stable runner"
    fi
fi

if [ "$engine" = stable ]; then
    FUZZ_SECONDS=$seconds FUZZ_TARGETS=$targets \
        cargo test --release --test fuzz_regressions -- --ignored --nocapture --exact fuzz_for_a_while
    exit
fi

# Seeds: valid encodings of every packet and payload, written by the test suite's helper.
FUZZ_CORPUS=fuzz/corpus cargo test --release --test fuzz_regressions -- --ignored --exact export_seeds >/dev/null
failed=()
summary=()
for target in ${targets//,/ }; do
    log=fuzz/artifacts/$target.log
    mkdir -p "fuzz/artifacts/$target"
    echo "== $target: $seconds s"
    # New inputs go to the first directory; the saved regressions seed the run too.
    corpora=("fuzz/corpus/$target")
    [ -d "tests/fuzz_corpus/$target" ] && corpora+=("tests/fuzz_corpus/$target")
    if libfuzzer run "$target" "${corpora[@]}" -- -max_total_time="$seconds" -max_len=8192 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$target")
        grep -E '^(==|SUMMARY|artifact_prefix|Test unit written)' "$log" || tail -20 "$log"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    summary+=("$(printf '%-22s %-6s %12s execs %9s/s' "$target" "$status" "${execs:-?}" "${rate:-?}")")
done
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/artifacts/<target>.log)"
    exit 1
fi
