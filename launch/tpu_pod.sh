#!/usr/bin/env bash
# ## Training on a Cloud TPU VM pod slice (launch/tpu_pod.sh)
#
# A pod slice (e.g. v5p-64 = 8 hosts x 4 chips) runs one `wam-train` process per host, all with
# the *same* command; JAX finds its peers by itself (`jax.distributed.initialize()` is automatic
# when TPU_WORKER_HOSTNAMES lists several hosts), and each process reads only its share of every
# batch. This script runs a command on every worker with
# `gcloud compute tpus tpu-vm ssh --worker=all`:
#
#     export TPU_NAME=my-v5p-64 ZONE=us-east5-a PROJECT=my-project        # PROJECT optional
#     launch/tpu_pod.sh setup  https://github.com/ORG/wam_jax.git  COMMIT  # clone + install on every host
#     launch/tpu_pod.sh train  --config=configs/pretrain.py:variant=L \
#         --workdir=gs://BUCKET/wam/pretrain_L \
#         --config.data.mixture=gs://BUCKET/oxe/bridge:0.5,gs://BUCKET/ego4d:0.5
#     launch/tpu_pod.sh logs                                              # tail worker 0's log
#     launch/tpu_pod.sh stop                                              # SIGTERM: save, then exit
#
# - The workdir must be shared by all hosts (a gs:// bucket): Orbax writes one checkpoint from all
#   processes, and each host stores its own data-iterator state in it.
# - Check the fit first without the hardware: `wam-compile
#   --config=configs/pretrain.py:variant=L --topology=v5p-64` (needs `pip install 'jax[tpu]'`).
# - Preemption / `stop`: every host gets SIGTERM, JAX agrees on a step, a checkpoint is saved and the
#   processes exit; `train` with the same arguments resumes (also after a hard crash: the newest
#   complete checkpoint is used, a half-written one is skipped with a warning).
# - Multi-slice (e.g. 2 x v5p-256 over DCN): set `--config.mesh.dcn_data=2` (data parallel across
#   slices, fsdp within); the same command runs on every host of every slice.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-east5-a)}"
REMOTE_DIR=${REMOTE_DIR:-wam_jax}
LOG=${LOG:-\$HOME/wam_train.log}

gcloud_ssh() {
  local worker=$1
  shift
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
    --worker="$worker" --command "$*"
}

quote_args() {
  local out=""
  for a in "$@"; do out+=" $(printf '%q' "$a")"; done
  echo "$out"
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup)
    repo=${1:?usage: tpu_pod.sh setup REPO_URL [COMMIT]}
    ref=${2:-HEAD}
    gcloud_ssh all "set -e; if [ ! -d $REMOTE_DIR/.git ]; then git clone -q $(printf '%q' "$repo") $REMOTE_DIR; fi; \
      cd $REMOTE_DIR && git fetch -q origin && git checkout -q $(printf '%q' "$ref") && \
      python3 -m venv .venv && .venv/bin/pip install -q -c requirements.lock -e '.[tpu]'"
    ;;
  train)
    [ $# -gt 0 ] || { echo "usage: tpu_pod.sh train --config=... --workdir=gs://..." >&2; exit 2; }
    args=$(quote_args "$@")
    # nohup: the run survives the ssh session; every host logs locally.
    gcloud_ssh all "cd $REMOTE_DIR && nohup .venv/bin/wam-train$args > $LOG 2>&1 < /dev/null &"
    echo "started on every worker of $TPU_NAME; follow with: $0 logs"
    ;;
  run)
    # any command on all workers, e.g. `tpu_pod.sh run 'cd wam_jax && git log -1 --oneline'`
    gcloud_ssh all "$*"
    ;;
  logs)
    gcloud_ssh 0 "tail -n 100 -f $LOG"
    ;;
  stop)
    gcloud_ssh all "pkill -TERM -f '[.]venv/bin/wam-train' || true"
    ;;
  *)
    sed -n '2,30p' "$0"
    exit 2
    ;;
esac
