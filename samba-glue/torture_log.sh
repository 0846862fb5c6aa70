# Sourced by torture.sh and preload/test_preload.sh: what an smbtorture run's log says, in
# one place, since smbtorture can print success regardless.
#
# torture_counts LOG: sets TORTURE_GOOD (success: lines), TORTURE_SKIPPED (skip: lines) and
# TORTURE_BAD (failure: and error: lines, or the mismatches a test counted itself, as in
# "finshed denytest2 (3 failures)", whichever is more). smbtorture writes CR progress bars
# into some lines, hence the tr.
torture_counts() {
    local text counted
    text=$(tr '\r' '\n' <"$1")
    TORTURE_GOOD=$(grep -cE '^success:' <<<"$text" || true)
    TORTURE_SKIPPED=$(grep -cE '^skip:' <<<"$text" || true)
    TORTURE_BAD=$(grep -cE '^(failure|error):' <<<"$text" || true)
    counted=$(sed -nE 's/.*\(([0-9]+) failures\)$/\1/p' <<<"$text" | awk '{n+=$1} END {print n+0}')
    [ "$counted" -gt "$TORTURE_BAD" ] && TORTURE_BAD=$counted
    return 0
}

# torture_passed RC: after torture_counts, whether the run passed: exit status 0, no
# failure, and at least one success.
torture_passed() {
    [ "$1" -eq 0 ] && [ "$TORTURE_BAD" -eq 0 ] && [ "$TORTURE_GOOD" -gt 0 ]
}
