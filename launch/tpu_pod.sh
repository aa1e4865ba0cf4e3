#!/usr/bin/env bash
# Runs a tinyrs_jax stage on every host of a Cloud TPU VM pod slice (the same command on all workers).
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a ./launch/tpu_pod.sh configs/pretrain.py /mnt/shared/runs/pretrain \
#       --config.init.hf_dir=/mnt/shared/Qwen2-VL-2B-Instruct --config.data.train=/mnt/shared/versad.jsonl \
#       --config.mesh.fsdp=-1 ...
#
# Needs: the repository at $REPO on every worker (installed with `pip install -e .[tpu]`), and a workdir and
# data on a filesystem every worker sees (Filestore/NFS, or a gcsfuse mount of a bucket). jax.distributed is
# initialised from the TPU metadata (config.distributed.mode=auto), the global batch is split across hosts,
# checkpoints are written by all hosts together. Rerunning the same command resumes from the workdir's latest
# checkpoint, e.g. after a preemption (SIGTERM saves a checkpoint first).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=$1; WORKDIR=$2; shift 2
REPO=${REPO:-~/tinyrs_jax}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command "
  set -e; cd $REPO
  export JAX_COMPILATION_CACHE_DIR=\${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/xla_cache}
  python -m tinyrs_jax.main --config=$CONFIG --workdir=$WORKDIR $ARGS 2>&1 | tee -a /tmp/tinyrs_\$(hostname).log
"
