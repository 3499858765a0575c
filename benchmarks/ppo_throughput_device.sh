#!/usr/bin/env bash
# The run behind the README's PPO throughput table: on a machine with a CUDA GPU and >= 8 cores, the
# CPU cases pinned to 2 cores (taskset) next to the CUDA cases on 4 other cores. The per-slide caches are
# filled first (not timed); the cold-cache start is benchmarks/cache_warm_start.py's measurement.
# Usage: bash benchmarks/ppo_throughput_device.sh OUT_DIR   (needs the package importable: pip install -e .)
set -u
out=${1:-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WSIGYM_CACHE=${WSIGYM_CACHE:-/tmp/wsigym-bench-cache}
py=${PYTHON:-python3}
prebuild='import sys, gymnasium as gym, wsigym; gym.make("WSIZoom-v0", device=sys.argv[1], progress=False)'
taskset -c 0-7 "$py" -c "$prebuild" cpu &
taskset -c 8-15 "$py" -c "$prebuild" cuda &
wait
taskset -c 0,1 "$py" benchmarks/ppo_throughput.py --threads 2 --timesteps 4096 --plain-timesteps 128 \
  --cache "$WSIGYM_CACHE" --cases env env+obs "plain sasha" "segments sasha" \
  "segments sasha, state tokens, 256-step rollouts" "plain evidence-bandit" "segments evidence-bandit" \
  --out "$out/ppo_throughput_cpu.json" --readme README.md > "$out/cpu.log" 2>&1 &
taskset -c 2-5 "$py" benchmarks/ppo_throughput.py --device cuda --threads 2 --timesteps 8192 \
  --cache "$WSIGYM_CACHE" --cases env "segments sasha" "segments sasha, state tokens, 256-step rollouts" \
  --out "$out/ppo_throughput_cuda.json" > "$out/cuda.log" 2>&1 &
wait
cp README.md "$out/README.md"
cat "$out/cpu.log" "$out/cuda.log"
