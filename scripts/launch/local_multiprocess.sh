#!/usr/bin/env bash
# The multi-host code path on one machine: P processes on 127.0.0.1, each with CPU_DEVICES fake
# CPU devices, joined through jax.distributed (--coordinator / --num_processes / --process_id).
# Each process feeds only its shard of the global batch, exactly as on a TPU pod or a SLURM job.
#
# Usage (from anywhere):
#   scripts/launch/local_multiprocess.sh P CONFIG WORKDIR [--config.x.y=v ...]
#   e.g. scripts/launch/local_multiprocess.sh 2 experiments/vae_digits/config.py /tmp/lmp \
#          --config.train.num_steps=20 --config.train.batch_size=32
#
# Waits for every process; if one fails, stops the others and exits with its code. SIGINT/SIGTERM
# to this script is passed on to all processes, which checkpoint and exit 0 (rerun to resume).
# Needs bash >= 5.1 (wait -n -p).
set -euo pipefail

PORT="${PORT:-}"                        # coordinator port; '' = a free one
CPU_DEVICES="${CPU_DEVICES:-2}"         # fake CPU devices per process (more can deadlock on 2 cores)
PYTHON="${PYTHON:-.venv/bin/python}"    # relative to the repository root

if (($# < 3)); then
  awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2  # the header comment
  exit 2
fi
if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  echo "error: needs bash >= 5.1 (this is $BASH_VERSION)" >&2
  exit 2
fi
NUM_PROCESSES="$1"
CONFIG="$2"
WORKDIR="$3"
shift 3
if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: P must be a positive integer, got '$NUM_PROCESSES'" >&2
  exit 2
fi

[[ "$WORKDIR" == /* ]] || WORKDIR="$PWD/$WORKDIR"
cd "$(dirname "$0")/../.."  # CONFIG (experiments/...) and PYTHON are relative to the repository
if [[ -z "$PORT" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

pids=()
stop() {  # stop(signal): send it to every process still running
  local pid
  for pid in "${pids[@]}"; do
    kill "-$1" "$pid" 2>/dev/null || true
  done
}
trap 'echo "local_multiprocess: stopping (processes checkpoint and exit)" >&2; stop TERM' INT TERM

echo "local_multiprocess: $NUM_PROCESSES processes x $CPU_DEVICES CPU devices," \
     "coordinator 127.0.0.1:$PORT, workdir $WORKDIR" >&2
for ((i = 0; i < NUM_PROCESSES; i++)); do
  "$PYTHON" -m research.main --config="$CONFIG" --workdir="$WORKDIR" \
      --coordinator="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" --process_id="$i" \
      --cpu_devices="$CPU_DEVICES" "$@" \
      > >(sed -u "s/^/[process $i] /") 2>&1 &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
while ((${#running[@]})); do
  rc=0
  finished=''
  wait -n -p finished "${running[@]}" || rc=$?
  if [[ -z "${finished:-}" ]]; then  # interrupted by a trapped signal: keep waiting
    continue
  fi
  left=()
  for pid in "${running[@]}"; do
    [[ "$pid" == "$finished" ]] || left+=("$pid")
  done
  running=("${left[@]+"${left[@]}"}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local_multiprocess: a process (pid $finished) exited with $rc; killing the others" >&2
    pids=("${running[@]+"${running[@]}"}")
    stop KILL
  fi
done
wait  # the output filters
if ((status == 0)); then
  echo "local_multiprocess: all $NUM_PROCESSES processes exited 0" >&2
fi
exit "$status"
