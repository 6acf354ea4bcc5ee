#!/usr/bin/env bash
# N processes x D simulated CPU devices on this machine, talking over loopback (gloo collectives).
#   launch/local_multiprocess.sh 2 4 --config configs/toy.py:runlocal --workdir /tmp/mp
set -euo pipefail
n=${1:?number of processes}; d=${2:?devices per process}; shift 2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$d" JAX_PLATFORMS=cpu \
    stylejax train "$@" --coordinator="127.0.0.1:$port" --num_processes="$n" --process_id="$i" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
