#!/usr/bin/env bash
# Data-parallel training under a real Slurm on this one machine: a one-node cluster (munged,
# slurmctld, slurmd) started here under a temporary directory, then
#   (a) `sbatch --ntasks=2 tools/slurm/mlatrain-cpu.sbatch` runs to COMPLETED and its final weights
#       equal a 1-rank run's within float32 reduction rounding;
#   (b) a 2-rank job preempted once it is past a few steps (USR1 to the batch shell, as
#       --signal=B:USR1@N would send it) writes a checkpoint, requeues itself, resumes from the
#       checkpoint and ends COMPLETED; then the same run as a job that nothing interrupts: the
#       final weights and every logged figure of the two are bitwise equal.
# The preemption signal is sent with `scancel --batch --signal=USR1` when the metrics show the
# step reached: slurmctld checks --signal=B:USR1@N on a ~30 s tick, too coarse for a test.
#
#   tests/slurm/test_slurm_dp.sh build/mlatrain build/compare_models
#
# Exits 77 ("skipped: ...") where Slurm, munge, Slurm's PMIx plugin or root is missing. Every wait
# is bounded; the daemons and the jobs are always stopped on exit.
set -u
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
compare="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$(date +%s)

for tool in slurmctld slurmd munged mungekey munge sbatch srun scontrol squeue sinfo scancel; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "skipped: Slurm is not installed ($tool not found; tools/install-deps.sh installs it)"
        exit 77
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "skipped: slurmd starts jobs only as root"
    exit 77
fi
if [ ! -x "$compare" ] || [ ! -x "$bin" ]; then
    echo "skipped: $bin or $compare is missing (a build without MPI has no compare_models)"
    exit 77
fi

# In memory where there is a tmpfs: slurmctld fsyncs its state at every change of a job, and on a
# busy disk one fsync has taken 28 s, holding up the preemption signal as long.
tmp_base=/dev/shm
[ -d "$tmp_base" ] && [ -w "$tmp_base" ] || tmp_base="${TMPDIR:-/tmp}"
work="$(mktemp -d "$tmp_base/mlatrain-slurm.XXXXXX")"
chmod 755 "$work" # munged wants every directory above its socket open to all
conf="$work/etc/slurm.conf"
export SLURM_CONF="$conf" # every Slurm command and daemon below uses this cluster only
msock="$work/munge/munge.socket.2"
node="$(hostname -s)"
daemons=()
jobs_started=()

checks=0
failed=0
# A Slurm client call, bounded: a client waits for ever for a controller that has died.
slurm() { timeout 30 "$@"; }
say() { printf '[%3ds] %s\n' $(($(date +%s) - started)) "$*"; }
check() { # description, then a command that must succeed
    local what="$1"
    shift
    checks=$((checks + 1))
    if "$@"; then
        say "PASS: $what"
    else
        failed=$((failed + 1))
        say "FAIL: $what"
        return 1
    fi
}

# Stops only what this script started: its jobs, the step daemons of this cluster (found by their
# SLURM_CONF), then the three daemons by the ids recorded at their start.
teardown() {
    local pid i end
    if [ ${#jobs_started[@]} -gt 0 ]; then
        slurm scancel "${jobs_started[@]}" 2>/dev/null
        end=$((SECONDS + 10))
        while ((SECONDS < end)); do
            [ -z "$(slurm squeue -h -j "$(IFS=,; echo "${jobs_started[*]}")" -t PD,R,CG,CF,RQ,S 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for pid in $(pgrep -x slurmstepd 2>/dev/null); do
        if { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$conf"; then
            for ((i = 0; i < 25; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    for pid in "${daemons[@]}"; do
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$failed" -ne 0 ]; then
        for f in two.out preempted.out straight.out log/slurmctld.log log/slurmd.log; do
            [ -f "$work/$f" ] && echo "==== $f (last 30 lines)" && tail -n 30 "$work/$f"
        done
    fi
    if [ "$failed" -ne 0 ] || [ -n "${KEEP_SLURM_TEST_DIR:-}" ]; then
        echo "test_slurm_dp: logs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A TCP port nothing listens on, so this cluster never meets another one on the machine.
free_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 40000))
        [ "$p" = "${1:-}" ] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    return 1
}

# ---- the cluster ----
mkdir -p "$work"/{etc,state,spool,log,munge,run}
chmod 755 "$work/munge"
ctld_port=$(free_port) && slurmd_port=$(free_port "$ctld_port") || { echo "FAIL: no free TCP port"; exit 1; }
# The node's CPUs, sockets and cores as slurmd sees them (no memory: the jobs ask for none).
nodeline="$(slurmd -C | head -1 | sed 's/ RealMemory=[0-9]*//')"
cat >"$conf" <<EOF
ClusterName=mlatraintest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$msock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
MinJobAge=300
KillWait=5
$nodeline NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
# Slurm's PMIx plugin names each step's directory /tmp/spmix_appdir_<uid>_<job>.<step>: a second
# cluster on the machine, or a directory left behind by one, would refuse to launch a step of the
# same job id. Hence job ids from a random start, and that directory under this test's own.
echo "FirstJobId=$((1000 + RANDOM * 16))" >>"$conf"
mkdir -p "$work/pmix"
echo "PMIxCliTmpDirBase=$work/pmix" >"$work/etc/mpi.conf"

if ! timeout 30 srun --mpi=list 2>&1 | grep -qw pmix; then
    echo "skipped: Slurm has no PMIx plugin (srun --mpi=list), which Open MPI's direct launch needs"
    exit 77
fi

mungekey --create --keyfile="$work/munge/munge.key" >/dev/null 2>&1
chmod 600 "$work/munge/munge.key"
munged -F --key-file="$work/munge/munge.key" --socket="$msock" --pid-file="$work/run/munged.pid" \
    --seed-file="$work/munge/munged.seed" --log-file="$work/log/munged.log" >"$work/log/munged.out" 2>&1 &
daemons+=($!)
for ((i = 0; i < 100; i++)); do [ -S "$msock" ] && break; sleep 0.1; done
slurmctld -D -i -f "$conf" >"$work/log/slurmctld.out" 2>&1 &
daemons+=($!)
slurmd -D -f "$conf" -N "$node" >"$work/log/slurmd.out" 2>&1 &
daemons+=($!)
state=""
end=$((SECONDS + 30))
while ((SECONDS < end)); do
    state="$(slurm sinfo -h -n "$node" -o %T 2>/dev/null | head -1)"
    [ "$state" = idle ] && break
    sleep 0.25
done
check "the cluster is up: node $node idle (ports $ctld_port, $slurmd_port)" test "$state" = idle
if [ "$state" != idle ]; then
    tail -n 20 "$work"/log/*
    exit 1
fi

# ---- the runs: a tiny random teacher and MLA student ----
"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
# A constant learning rate after the warmup: the first N steps are the same whatever max_steps
# says, so the run to be preempted can start with no end in sight (the signal may take seconds to
# arrive on a loaded machine) and be given its end once it has stopped.
write_config() { # file, max_steps
    cat >"$1" <<EOF
{
  "run": {"dir": "$work/unused", "seed": 1, "threads": 1},
  "teacher": {"arch": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 257,
              "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
              "max_position_embeddings": 64}, "init": "random", "seed": 5},
  "student": {
    "init_from": {"arch": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 257,
                  "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                  "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
                  "max_position_embeddings": 64}, "init": "random", "seed": 3},
    "mla": {"kv_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8,
            "rope_select": "uniform", "calibration_tokens": 128}
  },
  "data": {"train": ["$work/train.h5"], "val": ["$work/val.h5"], "seq_len": 32},
  "optim": {"lr": 3e-3, "warmup_steps": 10, "schedule": "constant"},
  "train": {"micro_batch": 2, "global_batch": 16, "max_steps": $2},
  "checkpoint": {"every_steps": 0},
  "eval": {"every_steps": 0},
  "log": {"every_steps": 1}
}
EOF
}

# Submits the CPU job script with 2 ranks; prints the job id.
submit() { # config, run name, then more options
    local cfg="$1" name="$2"
    shift 2
    MLATRAIN="$bin" slurm sbatch --parsable --ntasks=2 --chdir="$work" --output="$work/$name.out" \
        "$root/tools/slurm/mlatrain-cpu.sbatch" "$cfg" --set "run.dir=$work/$name" "$@" | cut -d';' -f1
}
# Submits; exits (the daemons stopped) when Slurm refuses the job.
submit_or_exit() { # what, then submit's arguments
    local what="$1"
    shift
    job=$(submit "$@")
    check "$what: submitted (job ${job:-none})" test -n "$job" || exit 1
    jobs_started+=("$job")
}
job_field() { slurm scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
wait_job_ended() { # job, seconds
    local s end=$((SECONDS + $2))
    while ((SECONDS < end)); do
        s="$(job_field "$1" JobState)"
        case "$s" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) return 0 ;; esac
        sleep 0.2
    done
    say "job $1 still $s after $2 s"
    return 1
}
completed() { # job: COMPLETED with exit code 0:0
    test "$(job_field "$1" JobState) $(job_field "$1" ExitCode)" = "COMPLETED 0:0"
}
# A run's metrics without the wall-clock fields.
figures() { sed 's/, "tok_s": [^,]*, "elapsed": [^,}]*//' "$1/metrics.jsonl"; }
step_reached() { # run dir, step
    grep -q "\"step\": $2," "$1/metrics.jsonl" 2>/dev/null
}

# ---- (a) 2 ranks against 1, over 12 steps: over hundreds, AdamW amplifies the last-bit differences
# of the two summation orders far beyond rounding ----
write_config "$work/short.json" 12
OMP_NUM_THREADS=1 timeout 120 "$bin" --config "$work/short.json" --set "run.dir=$work/one" >"$work/one.out" 2>&1
check "(a) 1 rank, outside Slurm, completes ($(tail -1 "$work/one.out"))" test $? -eq 0
submit_or_exit "(a) 2 ranks, 12 steps" "$work/short.json" two
wait_job_ended "$job" 120
check "(a) job $job: COMPLETED, exit 0:0 ($(job_field "$job" JobState) $(job_field "$job" ExitCode))" completed "$job"
check "(a) 2 ranks joined through PMIx ($(grep -m1 -o 'on each of 2 ranks, [a-z]*' "$work/two.out"))" \
    grep -q "on each of 2 ranks, mpi" "$work/two.out"
check "(a) 2 ranks x half the batch == 1 rank x the whole batch (float32 rounding)" \
    "$compare" "$work/one/final" "$work/two/final" 1e-5

# ---- (b) 2 ranks, preempted after a few steps, requeued, resumed ----
write_config "$work/preempted.json" 1000000
submit_or_exit "(b) 2 ranks, to be preempted" "$work/preempted.json" preempted
first_start=$SECONDS
# (The job's state, which asks slurmctld, only every 2 s: on a loaded machine an answer can take
# seconds, while the metrics file is read at once.)
end=$((SECONDS + 120))
for ((i = 0; SECONDS < end; i++)); do
    step_reached "$work/preempted" 10 && break
    if ((i % 20 == 19)); then
        case "$(job_field "$job" JobState)" in PENDING | RUNNING) ;; *) break ;; esac
    fi
    sleep 0.1
done
check "(b) job $job: the metrics show step 10 ($(($(date +%s) - started)) s)" step_reached "$work/preempted" 10
sent=$(date +%s)
slurm scancel --batch --signal=USR1 "$job"
say "sent USR1 to the batch shell of job $job (scancel took $(($(date +%s) - sent)) s)"
# The job script requeues the job when the ranks exit with status 3: it returns to PENDING with a
# begin time ~2 min ahead, which is brought forward below.
# On a machine whose disk other jobs keep busy, scancel has taken 28 s to reach slurmctld, and the
# signal has reached the batch shell 57 s after it.
requeued=0
end=$((SECONDS + 300))
while ((SECONDS < end)); do
    if [ "$(job_field "$job" Restarts)" = 1 ] && [ "$(job_field "$job" JobState)" = PENDING ]; then
        requeued=1
        break
    fi
    sleep 0.2
done
check "(b) job $job requeued itself: PENDING with Restarts=1 ($(job_field "$job" JobState), Restarts=$(job_field "$job" Restarts); $(($(date +%s) - sent)) s after the signal)" \
    test "$requeued" -eq 1 || exit 1
latest="$(cat "$work/preempted/checkpoints/latest" 2>/dev/null)"
stopped_at=$((10#${latest#step_}0 / 10)) # (0 when there is none)
check "(b) a checkpoint was written at the step the ranks stopped ($latest)" \
    test -n "$latest" -a -f "$work/preempted/checkpoints/$latest/manifest.json" -a "$stopped_at" -ge 10
check "(b) the batch shell passed USR1 to the ranks" grep -q "got SIGUSR1, passing it to every rank" "$work/preempted.out"
check "(b) the ranks stopped on request ($(grep -m1 'stopped at step' "$work/preempted.out"))" \
    grep -q "stopped at step $stopped_at on request" "$work/preempted.out"
check "(b) ... with exit status 3, and the script requeued the job" \
    grep -q "the ranks ended with status 3" "$work/preempted.out"
# The run ends 40 steps after its checkpoint; the reference, that far from the start, takes about
# as long as the first run did.
max_steps=$((stopped_at + 40))
first_run_s=$((SECONDS - first_start))
write_config "$work/preempted.json" "$max_steps"
# The job would start again in about 2 minutes; it is started now, once (1) the first run's step
# daemons have exited: a new step 0 cannot bind the PMIx socket an old one still holds; and (2)
# 2 s have passed: slurmd revokes the first run's credential when the requeue kills the batch
# script, and a start within the same second is refused ("Job credential revoked") for good.
end=$((SECONDS + 30))
while ((SECONDS < end)); do
    pgrep -f "^slurmstepd: \[$job\." >/dev/null || break
    sleep 0.1
done
check "(b) the first run's step daemons have exited" test -z "$(pgrep -f "^slurmstepd: \[$job\.")"
sleep 2
slurm scontrol update JobId="$job" StartTime=now
wait_job_ended "$job" 180
check "(b) job $job: COMPLETED, exit 0:0, Restarts=1 ($(job_field "$job" JobState) $(job_field "$job" ExitCode), Restarts=$(job_field "$job" Restarts))" \
    test "$(job_field "$job" JobState) $(job_field "$job" ExitCode) $(job_field "$job" Restarts)" = "COMPLETED 0:0 1"
check "(b) the second start resumed from the checkpoint ($(grep -m1 'resuming from' "$work/preempted.out"))" \
    grep -q "resuming from $work/preempted/checkpoints/$latest at step $stopped_at" "$work/preempted.out"

# ---- (b) the reference: the same run on 2 ranks, uninterrupted ----
write_config "$work/straight.json" "$max_steps"
submit_or_exit "(b) 2 ranks, $max_steps steps, uninterrupted" "$work/straight.json" straight
wait_job_ended "$job" $((180 + 2 * first_run_s))
check "(b) job $job: COMPLETED, exit 0:0 ($(job_field "$job" JobState) $(job_field "$job" ExitCode))" completed "$job"
check "(b) preempted and resumed == uninterrupted: final weights bitwise equal" \
    "$compare" "$work/straight/final" "$work/preempted/final" 0
check "(b) ... byte for byte (model.safetensors)" \
    cmp -s "$work/straight/final/model.safetensors" "$work/preempted/final/model.safetensors"
check "(b) ... and every logged figure equal" \
    cmp -s <(figures "$work/straight") <(figures "$work/preempted")

echo "test_slurm_dp: $checks checks, $failed failed, $(($(date +%s) - started)) s"
[ "$failed" -eq 0 ]
