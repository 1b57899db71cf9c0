#!/usr/bin/env bash
# The loss section end to end: each loss.kind trains from the config, metrics' loss is
# kl_weight T^2 kl + ce_weight ce (T applied once, to the divergence only), the kinds give the same
# CE and different divergences on the same first batch, loss.chunk_tokens changes nothing but
# rounding, and bad loss keys are refused by name.
set -u
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"

"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
sets=(--set "data.train=$work/train.h5" --set "data.val=$work/val.h5" --set train.max_steps=2
      --set log.every_steps=1 --set eval.every_steps=0 --set checkpoint.every_steps=0 --set teacher.seed=9
      --set loss.temperature=2 --set loss.kl_weight=0.7 --set loss.ce_weight=0.3)

# field $2 of step 1 in run $1's metrics
first() { grep '"step": 1,' "$work/$1/metrics.jsonl" | sed -e "s/.*\"$2\": \([-0-9.e+]*\).*/\1/"; }
# $1 and $2 agree to a relative $3
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= t * m) }'; }

for kind in forward_kl reverse_kl jsd; do
    run "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/$kind" --set "loss.kind=$kind"
    check "$kind: trains (rc $rc: $err)" test "$rc" -eq 0
    check "$kind: the effective config records the kind" grep -q "\"kind\": \"$kind\"" "$work/$kind/effective_config.json"
    loss=$(first "$kind" loss) kl=$(first "$kind" kl) ce=$(first "$kind" ce)
    want=$(awk -v k="$kl" -v c="$ce" 'BEGIN { printf "%.9g", 0.7 * 4 * k + 0.3 * c }')
    check "$kind: loss $loss = 0.7 T^2 kl + 0.3 ce = $want" close "$loss" "$want" 1e-6
    check "$kind: the divergence is positive ($kl)" awk -v k="$kl" 'BEGIN { exit !(k > 1e-4) }'
done
check "the kinds share the first batch's CE" test "$(first forward_kl ce)" = "$(first reverse_kl ce)" -a \
    "$(first forward_kl ce)" = "$(first jsd ce)"
check "forward and reverse KL differ ($(first forward_kl kl) vs $(first reverse_kl kl))" \
    test "$(first forward_kl kl)" != "$(first reverse_kl kl)"
# convexity: KL(p || m) <= KL(p || q) / 2 for m = (p + q) / 2, so JSD_0.5 <= (KL + reverse KL) / 4
check "the JSD (beta 0.5) is at most a quarter of the two KLs' sum" awk -v j="$(first jsd kl)" \
    -v f="$(first forward_kl kl)" -v r="$(first reverse_kl kl)" 'BEGIN { exit !(j > 0 && j <= (f + r) / 4) }'

run "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/beta" --set loss.kind=jsd \
    --set loss.jsd_beta=0.1
check "jsd_beta reaches the loss" test "$(first beta kl)" != "$(first jsd kl)"
run "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/chunked" --set loss.kind=jsd \
    --set loss.chunk_tokens=7
check "loss.chunk_tokens = 7 gives the first step's loss to rounding" close "$(first chunked loss)" "$(first jsd loss)" 1e-6

expect_error "an unknown kind" "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/x" \
    --set loss.kind=kl -- "loss.kind" '"forward_kl", "reverse_kl" or "jsd"'
expect_error "jsd_beta at 1" "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/x" \
    --set loss.kind=jsd --set loss.jsd_beta=1 -- "loss.jsd_beta: must be in (0, 1), got 1"
expect_error "a negative chunk" "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/x" \
    --set loss.chunk_tokens=-3 -- "loss.chunk_tokens: must be >= 0"

echo "test_loss_kinds: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
