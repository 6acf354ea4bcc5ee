#!/usr/bin/env bash
# Run one config on every worker of a TPU VM pod slice; jax.distributed starts by itself there.
#   launch/tpu_vm.sh TPU_NAME ZONE --config configs/toy.py --workdir gs://bucket/run
set -euo pipefail
tpu=${1:?tpu name}; zone=${2:?zone}; shift 2
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/stylejax && pip install -e '.[tpu]' -q && stylejax train $*"
