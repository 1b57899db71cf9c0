#!/usr/bin/env bash
# Installs, from Debian 12's packages, exactly what mlatrain's build and tests need.
# Idempotent: prints nothing and installs nothing when every package is already present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev liblapacke-dev   # BLAS (OpenMP threading, so one thread count rules all) + LAPACK
  libhdf5-dev                             # hdf5-serial: token datasets, checkpoints
  libcjson-dev                            # configs, HF config.json, safetensors headers
  libpcre2-dev libutf8proc-dev            # tokenizer.json: pre-tokenizer regexes, Unicode normalization
  libopenmpi-dev openmpi-bin              # optional: data-parallel on the CPU
  slurm-wlm munge                         # optional: tests/slurm/test_slurm_dp.sh's one-node cluster
  libpmix-dev                             # srun --mpi=pmix: Slurm's plugin loads pmix2/lib/libpmix.so from it
  bible-kjv                               # the offline corpus of the demo (tools/make-corpus.sh)
  python3                                 # tools/cuda-emu's source transformation
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
