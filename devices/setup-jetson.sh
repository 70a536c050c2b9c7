#!/usr/bin/env bash
# Prepare an NVIDIA Jetson (JetPack 5 or 6: Orin Nano, Orin NX, AGX Orin) to be measured by rlprune-edge.
#
# Run it ON the Jetson, e.g. from the host:   ssh orin 'bash -s' < devices/setup-jetson.sh
# (add arguments after `-s --`, e.g.  ssh orin 'bash -s -- --max-clocks' < ...)
#
# TensorRT ships with JetPack (Debian package python3-libnvinfer); this script makes sure it is
# installed, adds numpy from apt, and creates a virtualenv that sees both and holds pycuda from pip
# (the runner's CUDA buffers; built against the JetPack CUDA in /usr/local/cuda). At the end it
# prints the python path to put into your profile's [connection] python.
#
# Options:
#   --venv DIR      where to create the virtualenv (default ~/.local/share/rlprune-edge/venv)
#   --max-clocks    `nvpmodel -m 0` (maximum power mode) and `jetson_clocks` now (not persistent)
#   --dry-run       print the commands instead of running them
set -euo pipefail

venv="$HOME/.local/share/rlprune-edge/venv"
max_clocks=0
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --max-clocks) max_clocks=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup-jetson: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  if [ "$dry" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi

if [ ! -e /etc/nv_tegra_release ]; then
  echo "setup-jetson: /etc/nv_tegra_release is missing: this does not look like a Jetson with JetPack." >&2
  echo "  Flash JetPack with NVIDIA SDK Manager (or the SD-card image) first." >&2
  [ "$dry" = 1 ] || exit 2
else
  echo "L4T: $(head -n1 /etc/nv_tegra_release)"
fi

cuda_home=/usr/local/cuda
if [ ! -x "$cuda_home/bin/nvcc" ]; then
  echo "setup-jetson: $cuda_home/bin/nvcc not found; installing the JetPack CUDA toolkit (nvidia-jetpack)." >&2
  run "${sudo_cmd[@]}" apt-get update -q
  run "${sudo_cmd[@]}" apt-get install -y -q nvidia-jetpack
fi

echo "== apt: TensorRT Python bindings, numpy, venv, headers for pycuda"
run "${sudo_cmd[@]}" apt-get update -q
run "${sudo_cmd[@]}" apt-get install -y -q python3-libnvinfer python3-numpy python3-venv python3-pip python3-dev

echo "== virtualenv $venv (sees TensorRT and numpy) + pycuda from pip"
run python3 -m venv --system-site-packages "$venv"
if [ "$dry" = 1 ]; then
  echo "+ PATH=$cuda_home/bin:\$PATH CPATH=$cuda_home/include $venv/bin/python -m pip install pycuda"
else
  PATH="$cuda_home/bin:$PATH" CPATH="$cuda_home/include${CPATH:+:$CPATH}" \
    "$venv/bin/python" -m pip install --disable-pip-version-check -q pycuda
fi

if [ "$max_clocks" = 1 ]; then
  echo "== maximum power mode and clocks (until reboot)"
  run "${sudo_cmd[@]}" nvpmodel -m 0
  run "${sudo_cmd[@]}" jetson_clocks
fi

echo "== check"
if [ "$dry" = 1 ]; then
  echo "+ $venv/bin/python -c 'import tensorrt, pycuda.autoinit'"
else
  "$venv/bin/python" - <<'EOF'
import platform

import numpy
import tensorrt

import pycuda.autoinit  # noqa: F401
import pycuda.driver as cuda

dev = cuda.Device(0)
print(f"python {platform.python_version()}  numpy {numpy.__version__}  tensorrt {tensorrt.__version__}")
print(f"GPU {dev.name()}  compute capability {'.'.join(map(str, dev.compute_capability()))}")
EOF
  command -v nvpmodel >/dev/null 2>&1 && nvpmodel -q 2>/dev/null | head -n 2 || true
fi

shown="$venv"
case "$venv" in "$HOME"/*) shown="~/${venv#"$HOME"/}" ;; esac
echo
echo "Done. In your profile's [connection] table set:"
echo "  python = \"$shown/bin/python\""
