#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (v4-32, v5litepod-16, ...): every worker (host) runs the same
# command with --distributed, and jax.distributed.initialize() finds the other workers from the
# TPU VM metadata. Run from your machine, with gcloud authenticated and a project set.
#
#   scripts/launch/tpu_pod.sh create                  # create the slice (reuses an existing one)
#   scripts/launch/tpu_pod.sh setup                   # copy this checkout to every worker, install
#   scripts/launch/tpu_pod.sh train CONFIG WORKDIR [--config.x.y=v ...]
#   scripts/launch/tpu_pod.sh stop                    # SIGTERM: the run checkpoints and exits 0
#   scripts/launch/tpu_pod.sh delete
#
# Settings are environment variables (defaults below), e.g.
#   TPU_NAME=my-pod ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 scripts/launch/tpu_pod.sh create
# WORKDIR must be a directory every worker sees at the same path (e.g. an NFS / Filestore
# mount): checkpoints are written jointly by all workers, metrics by worker 0.
# SSH to several workers at once wants your key in an agent: ssh-add ~/.ssh/google_compute_engine
set -euo pipefail

TPU_NAME="${TPU_NAME:-genlab-pod}"
ZONE="${ZONE:-us-central2-b}"                  # a zone that offers ACCELERATOR_TYPE
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"  # v4-32 = 4 hosts x 4 chips; v5litepod-16 = 4 x 4
PROJECT="${PROJECT:-}"                         # '' = gcloud's default project
SPOT="${SPOT:-0}"                              # 1 = a Spot (preemptible) slice
# TPU software version per generation (cloud.google.com/tpu/docs/runtimes).
case "$ACCELERATOR_TYPE" in
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v5litepod-*) default_runtime=v2-alpha-tpuv5-lite ;;
  *) default_runtime=tpu-ubuntu2204-base ;;    # v4 and older
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$default_runtime}"
REPO_URL="${REPO_URL:-}"        # git URL to clone on every worker; '' = copy this checkout
REPO_REF="${REPO_REF:-}"        # with REPO_URL: branch, tag or commit ('' = default branch)
REMOTE_DIR="${REMOTE_DIR:-genlab}"  # on each worker, relative to the home directory
PYTHON="${PYTHON:-python3.11}"      # the workers' interpreter for the venv (the project needs >= 3.11)
EXTRAS="${EXTRAS:-data,tf}"  # pip extras (setup.cfg): data = the package datasets (digits,
                             # MNIST-5k); tf = TensorFlow for data.source=tfds and gs:// data_dir
JAX_SPEC="${JAX_SPEC:-jax[tpu]>=0.10.2,<0.12}"  # JAX install docs: pip install -U "jax[tpu]"
DETACH="${DETACH:-0}"   # 1 = train under nohup (survives a dropped SSH session), log in ~/genlab-train.log
DRY_RUN="${DRY_RUN:-0}" # 1 = print the gcloud commands without running them

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

quote() {  # one argument as the shell would need it, readably: 'a b', --command='...'
  local a="$1" flag=''
  if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]*$ && -n "$a" ]]; then
    printf '%s' "$a"
    return
  fi
  if [[ "$a" =~ ^(--[a-z-]+=) ]]; then
    flag="${BASH_REMATCH[1]}"
    a="${a#"$flag"}"
  fi
  printf "%s'%s'" "$flag" "${a//\'/\'\\\'\'}"
}

run() {  # prints the command, then runs it unless DRY_RUN=1
  local a line='+'
  for a in "$@"; do line+=" $(quote "$a")"; done
  printf '%s\n' "$line" >&2
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

on_all_workers() {  # on_all_workers 'shell command': runs it on every worker at once
  run "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}

usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2  # the header comment
  exit 2
}

cmd_create() {
  if [[ "$DRY_RUN" != 1 ]] && "${GCLOUD_TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" \
      --format='value(state)' >/dev/null 2>&1; then
    echo "TPU $TPU_NAME already exists in $ZONE; using it" >&2
    return
  fi
  local extra=()
  [[ "$SPOT" == 1 ]] && extra+=(--spot)
  run "${GCLOUD_TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]+"${extra[@]}"}"
}

cmd_setup() {
  local q_dir q_url q_ref
  q_dir="$(printf '%q' "$REMOTE_DIR")"
  if [[ -n "$REPO_URL" ]]; then
    q_url="$(printf '%q' "$REPO_URL")"
    q_ref="$(printf '%q' "$REPO_REF")"
    on_all_workers "set -euo pipefail; cd ~
      if [ -d $q_dir/.git ]; then git -C $q_dir fetch -q origin; else git clone -q $q_url $q_dir; fi
      cd $q_dir
      if [ -n $q_ref ]; then git checkout -q $q_ref; fi
      if git symbolic-ref -q HEAD >/dev/null; then git merge -q --ff-only '@{u}'; fi"
  else
    # This checkout as it is (tracked and untracked files, .gitignore'd ones left out).
    local tmp tarball
    tmp="$(mktemp -d)"
    trap "rm -rf '$tmp'" EXIT
    tarball="$tmp/genlab-src.tar.gz"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done \
      | tar --null -T - -czf "$tarball")
    run "${GCLOUD_TPU[@]}" scp "$tarball" "$TPU_NAME:genlab-src.tar.gz" "${WHERE[@]}" --worker=all
    on_all_workers "set -euo pipefail; mkdir -p ~/$q_dir && tar -xzf ~/genlab-src.tar.gz -C ~/$q_dir"
  fi
  # A venv on every worker: the project with its extras and JAX for TPU, in one resolve.
  on_all_workers "set -euo pipefail; cd ~/$q_dir
    if ! command -v $(printf '%q' "$PYTHON") >/dev/null; then
      sudo apt-get update -qq && sudo apt-get install -y -qq $(printf '%q' "$PYTHON") $(printf '%q' "$PYTHON")-venv
    fi
    [ -x .venv/bin/python ] || $(printf '%q' "$PYTHON") -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e $(printf '%q' ".[$EXTRAS]") $(printf '%q' "$JAX_SPEC")"
  # Every worker at once (a slice's devices only come up together): each should print the
  # slice's total device count.
  on_all_workers "cd ~/$q_dir && .venv/bin/python -c 'import jax; jax.distributed.initialize(); \
print(f\"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local, {jax.device_count()} total devices\")'"
}

cmd_train() {
  (($# >= 2)) || usage
  local config="$1" workdir="$2"
  shift 2
  local args=(.venv/bin/python -m research.main --distributed --config="$config" --workdir="$workdir" "$@")
  local line q_dir
  q_dir="$(printf '%q' "$REMOTE_DIR")"
  line="$(printf '%q ' "${args[@]}")"
  line="${line% }"
  if [[ "$DETACH" == 1 ]]; then
    on_all_workers "cd ~/$q_dir && nohup $line > ~/genlab-train.log 2>&1 < /dev/null &"
    echo "started on every worker; follow worker 0 with:" >&2
    echo "  ${GCLOUD_TPU[*]} ssh $TPU_NAME ${WHERE[*]} --worker=0 --command='tail -f ~/genlab-train.log'" >&2
  else
    on_all_workers "cd ~/$q_dir && $line"
  fi
}

cmd_stop() {  # the same as a preemption notice: checkpoint at the next step, exit 0
  on_all_workers "pkill -TERM -f 'python -m research.main' || true"
}

cmd_delete() {
  run "${GCLOUD_TPU[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

(($# >= 1)) || usage
sub="$1"
shift
case "$sub" in
  create) cmd_create ;;
  setup) cmd_setup ;;
  train) cmd_train "$@" ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  *) usage ;;
esac
