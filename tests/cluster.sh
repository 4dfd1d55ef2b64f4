#!/usr/bin/env bash
# make test-cluster: the tiny config trained by 2 processes launched by Open MPI's mpirun
# and by srun on a single-node Slurm this script starts and stops, each against one process
# with 2 devices: the train losses must be equal (per-device sampling streams are the same
# for the same device count). As root it installs what is missing (Debian's openmpi-bin,
# slurmd, slurmctld, slurm-client, munge); otherwise it stops in one line naming them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"

missing=()
for tool in mpirun:openmpi-bin slurmctld:slurmctld slurmd:slurmd srun:slurm-client \
    munged:munge; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "make test-cluster needs ${missing[*]}: run it as root, or apt-get install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

tmp=$(mktemp -d /tmp/maskrcnn_jax_cluster.XXXXXX)
daemons=()  # The pid files of what this script started.
stop() {
  local pid_file pid pids=()
  for pid_file in "${daemons[@]}"; do
    if [ -s "$pid_file" ]; then pids+=("$(cat "$pid_file")"); fi
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # slurmctld saves its state as it stops: wait for every daemon before removing $tmp.
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  rm -rf "$tmp" 2>/dev/null || { sleep 1; rm -rf "$tmp"; }
}
trap stop EXIT

# Each run's log is shown only when it fails. Every launch compiles without XLA's
# optimisations, as the tests do: faster, and the same programs for all of them.
logged() {
  local name=$1 start=$SECONDS
  shift
  "$@" > "$tmp/$name.log" 2>&1 || { tail -n 40 "$tmp/$name.log"; echo "$name failed" >&2; exit 1; }
  echo "$name: $((SECONDS - start)) s"
}
export PYTHONPATH="$PWD" TF_CPP_MIN_LOG_LEVEL=3 JAX_PLATFORMS=cpu \
  JAX_DISABLE_MOST_OPTIMIZATIONS=1 JAX_COMPILATION_CACHE_DIR="$tmp/cache"
train=("$PY" main.py --config configs/tiny.py --mode train --config.data.root="$tmp/data")

XLA_FLAGS=--xla_force_host_platform_device_count=2 \
  logged "1 process x 2 devices" "${train[@]}" --workdir "$tmp/one"

root=()
[ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
logged "mpirun -np 2" mpirun -np 2 "${root[@]}" --bind-to none -x PATH -x PYTHONPATH \
  -x TF_CPP_MIN_LOG_LEVEL -x JAX_PLATFORMS -x JAX_DISABLE_MOST_OPTIMIZATIONS \
  -x JAX_COMPILATION_CACHE_DIR "${train[@]}" --workdir "$tmp/mpirun"

slurm="$tmp/slurm"
mkdir -p "$slurm/state" "$slurm/spool"
host=$(hostname -s)
cat > "$slurm/slurm.conf" <<EOF
ClusterName=maskrcnn-jax-ci
SlurmctldHost=$host
SlurmUser=$(id -un)
AuthType=auth/munge
StateSaveLocation=$slurm/state
SlurmdSpoolDir=$slurm/spool
SlurmctldPidFile=$slurm/slurmctld.pid
SlurmdPidFile=$slurm/slurmd.pid
SlurmctldLogFile=$slurm/slurmctld.log
SlurmdLogFile=$slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$slurm/slurm.conf"
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # No munged running: start one.
  if [ "$(id -u)" != 0 ]; then
    echo "make test-cluster needs a running munged (systemctl start munge), or root" >&2
    exit 1
  fi
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
  install -d -o munge -g munge /run/munge
  runuser -u munge -- munged
  daemons+=(/run/munge/munged.pid)
fi
slurmctld -f "$SLURM_CONF"
daemons+=("$slurm/slurmctld.pid")
slurmd -f "$SLURM_CONF"
daemons+=("$slurm/slurmd.pid")
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && break
  sleep 1
done
if ! sinfo -h -o %T 2>/dev/null | grep -qx idle; then
  tail -n 20 "$slurm"/*.log
  echo "the single-node Slurm did not start (logs above)" >&2
  exit 1
fi
logged "srun -n 2 on a single-node Slurm" srun -N 1 -n 2 --cpus-per-task=1 \
  --kill-on-bad-exit=1 "${train[@]}" --workdir "$tmp/srun"

"$PY" - "$tmp" <<'EOF'
import sys

import numpy as np

from maskrcnn_jax.evaluation import pictures

tmp = sys.argv[1]
steps, one = pictures.read_scalars(f"{tmp}/one")["train/total_loss"]
for launcher in ("mpirun", "srun"):
  other_steps, other = pictures.read_scalars(f"{tmp}/{launcher}")["train/total_loss"]
  np.testing.assert_array_equal(other_steps, steps, err_msg=launcher)
  np.testing.assert_allclose(other, one, rtol=1e-5, err_msg=launcher)
  print(f"{launcher}: {len(steps)} train losses equal to 1 process x 2 devices")
EOF
