#!/usr/bin/env bash
# Runs a tinyrs_jax stage on every host of a Cloud TPU VM pod slice (the same command on all workers).
#
#   bash launch/tpu_pod.sh my-v5e-32 us-west4-a configs/pretrain.py /mnt/gcs/runs/pretrain \
#       --config.init.hf_dir=/mnt/gcs/Qwen2-VL-2B-Instruct --config.data.train=/mnt/gcs/versad.jsonl \
#       --config.mesh.fsdp=16 ...
#
# Needs: the repository at $REPO (default ~/tinyrs_jax) on every worker, installed with `pip install -e .[tpu]`,
# and the workdir and data on a filesystem every worker sees at the same path (Filestore/NFS, or a bucket
# mounted with gcsfuse; a gs:// URL is refused). $PROJECT picks the GCP project. jax.distributed is
# initialised from the TPU metadata (config.distributed.mode=auto), the global batch is split across hosts,
# checkpoints are written by all hosts together. Rerunning the same command resumes from the workdir's latest
# checkpoint, e.g. after a preemption (SIGTERM saves a checkpoint first).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=${REPO:-~/tinyrs_jax}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command "
  set -e; cd $REPO
  export JAX_COMPILATION_CACHE_DIR=\${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/xla_cache}
  python -m tinyrs_jax.main --config=$CONFIG --workdir=$WORKDIR $ARGS 2>&1 | tee -a /tmp/tinyrs_\$(hostname).log
"
