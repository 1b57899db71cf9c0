#!/usr/bin/env bash
# Rank 1 of 2 fails rank 0 inside a collective, stuck (alive, never joining) or dead (killed): the
# job must still end, non-zero, within the timeout. Usage: test_comm_fault.sh stuck|dies BINARY MPIRUN...
set -u
fault="$1"
bin="$2"
shift 2
timeout_s=2
# Start-up of two ranks on a loaded two-core machine plus the abort; far below rank 1's 60 s sleep.
limit_s=30

err="$(mktemp)"
trap 'rm -f "$err"' EXIT
start=$(date +%s%N)
timeout 90 "$@" -np 2 "$bin" "$fault" "$timeout_s" >/dev/null 2>"$err"
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))

failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }
[ "$rc" -ne 0 ] || fail "the job exited 0"
[ "$rc" -ne 124 ] || fail "the job was still running after 90 s"
[ "$elapsed_ms" -lt $((limit_s * 1000)) ] || fail "the job took ${elapsed_ms} ms to end (limit ${limit_s} s)"
grep -q "the collective returned" "$err" && fail "rank 0's collective returned"
case "$fault" in
stuck)
    line="mlatrain: rank 0: barrier did not complete within ${timeout_s} s: another rank has died or is stuck; aborting the job"
    grep -qxF "$line" "$err" || fail "no line '$line' on stderr"
    ;;
dies)
    grep -q "rank 1" "$err" || fail "stderr does not name rank 1"
    ;;
esac

echo "rank_${fault}: exit status $rc after ${elapsed_ms} ms; stderr:"
sed 's/^/  | /' "$err"
[ "$failed" -eq 0 ] && echo "test_mpi_comm_rank_${fault}: passed" || echo "test_mpi_comm_rank_${fault}: FAILED"
exit "$failed"
