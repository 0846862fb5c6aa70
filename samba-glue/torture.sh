#!/bin/bash
# smbtorture across the two nodes that cluster.sh started in DIR:
#
#   torture.sh DIR [TEST...]     (default: raw.oplock base.lock base.deny2 base.ntdeny2 base.open)
#
# Every test gets both servers in torture:unclist, so its first connection goes to node A
# and its second to node B: the conflicts these tests expect are cross-node ones. Prints
# one line per test, `TEST ok` or `TEST FAILED (n failures)`, with the failed subtests
# indented below; exits non-zero if any failed. Full output: DIR/torture/TEST.log.
#
# smbtorture's verdict alone is not trusted: a test counts as passed only if it ended
# within TORTURE_TIMEOUT seconds (default 240), printed no `failure:` or `error:` line, at
# least one `success:` line, and no non-zero "(N failures)" count: base.ntdeny2 stops at
# its first mismatch and still reports success. --failures=1000 lets the deny tests run
# their whole table and count every mismatch; ntdeny2 tries 500 random pairs (default 10).
# --target=samba3 makes smbtorture expect Samba's documented deviations from Windows
# (raw.oplock's setpathinfo and rename break counts, stream1).
set -euo pipefail
# shellcheck source=torture_log.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/torture_log.sh"

usage() {
    echo "usage: torture.sh DIR [TEST...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
DIR=$1
shift
[ -f "$DIR/cluster.env" ] || { echo "torture.sh: no $DIR/cluster.env; run cluster.sh up $DIR first" >&2; exit 2; }
# shellcheck source=/dev/null
. "$DIR/cluster.env"
: "${HOSTS:?$DIR/cluster.env names no HOSTS}" "${SMBPASS:?$DIR/cluster.env names no SMBPASS}"
command -v smbtorture >/dev/null || { echo "torture.sh: no smbtorture (apt-get install samba-testsuite)" >&2; exit 2; }

TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(raw.oplock base.lock base.deny2 base.ntdeny2 base.open)
LIMIT=${TORTURE_TIMEOUT:-240}
read -r -a hosts <<<"$HOSTS"
out="$DIR/torture"
mkdir -p "$out"
printf '//%s/share\n' "${hosts[@]}" >"$out/unclist"

failed=0
for test in "${TESTS[@]}"; do
    log="$out/$test.log"
    start=$SECONDS
    rc=0
    extra=()
    [ "$test" = base.ntdeny2 ] && extra=(--num-ops=500)
    timeout --kill-after=10 "$LIMIT" smbtorture --target=samba3 "//${hosts[0]}/share" \
        -U "root%$SMBPASS" --option="torture:unclist=$out/unclist" --failures=1000 \
        --option=torture:progress=no "${extra[@]}" "$test" >"$log" 2>&1 || rc=$?
    elapsed=$((SECONDS - start))
    torture_counts "$log"
    good=$TORTURE_GOOD bad=$TORTURE_BAD skipped=$TORTURE_SKIPPED
    if torture_passed "$rc"; then
        echo "$test ok"
        echo "    $good passed, $skipped skipped, ${elapsed}s"
        continue
    fi
    failed=$((failed + 1))
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "$test FAILED ($bad failures, timed out after ${LIMIT}s)"
    else
        echo "$test FAILED ($bad failures)"
    fi
    echo "    $good passed, $skipped skipped, exit status $rc, ${elapsed}s; log $log"
    tr '\r' '\n' <"$log" | grep -E '^(failure|error):|\(([1-9][0-9]*) failures\)$' -A2 |
        grep -vE '^(--|\]|time: .*)$' | head -24 | sed 's/^/    /'
done
[ "$failed" -eq 0 ]
