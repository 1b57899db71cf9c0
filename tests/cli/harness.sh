# The shell tests' checks, sourced by each: check counts and reports, run captures a command's
# status and output, expect_error asserts a one-line error. Needs $work (a scratch folder).
checks=0
failed=0
# Progress lines come once a second of a long step, so how many reach stderr depends on the
# machine's speed: none here, unless a test asks for them.
export MLATRAIN_PROGRESS_SECONDS=86400

check() { # description, then a command that must succeed
    local what="$1"
    shift
    checks=$((checks + 1))
    if ! "$@"; then
        failed=$((failed + 1))
        echo "FAIL: $what" >&2
    fi
}

# Runs the command; sets rc, out, err.
run() {
    "$@" >"$work/out" 2>"$work/err"
    rc=$?
    out="$(cat "$work/out")"
    err="$(cat "$work/err")"
}

# The command must fail with status 1 and exactly one stderr line containing each given text.
expect_error() {
    local what="$1" needle
    shift
    local -a cmd=()
    while [ "$1" != "--" ]; do cmd+=("$1"); shift; done
    shift
    run "${cmd[@]}"
    check "$what: exit status 1 (got $rc)" test "$rc" -eq 1
    check "$what: one line on stderr (got: $err)" test "$(printf '%s\n' "$err" | wc -l)" -eq 1
    for needle in "$@"; do
        check "$what: stderr mentions '$needle' (got: $err)" grep -qF -- "$needle" "$work/err"
    done
}
