#!/usr/bin/env bash
# Prepare a Raspberry Pi (Raspberry Pi OS Bookworm or later, 64-bit) to be measured by rlprune-edge.
#
# Run it ON the Pi, e.g. from the host:   ssh pi4 'bash -s' < devices/setup-raspberry-pi.sh
# (add arguments after `-s --`, e.g.  ssh pi4 'bash -s -- --performance-governor' < ...)
#
# What it does: installs python3-numpy (apt) and creates a small virtualenv that sees the system
# numpy and holds onnxruntime from pip (Bookworm's system pip refuses global installs, PEP 668).
# At the end it prints the python path to put into your profile's [connection] python.
#
# Options:
#   --venv DIR               where to create the virtualenv (default ~/.local/share/rlprune-edge/venv)
#   --performance-governor   set every CPU's cpufreq governor to "performance" now (not persistent)
#   --dry-run                print the commands instead of running them
set -euo pipefail

venv="$HOME/.local/share/rlprune-edge/venv"
governor=0
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --performance-governor) governor=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup-raspberry-pi: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  if [ "$dry" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi

arch=$(uname -m)
if [ "$arch" != "aarch64" ]; then
  echo "setup-raspberry-pi: this is $arch; onnxruntime publishes ARM wheels only for 64-bit (aarch64)." >&2
  echo "  Install the 64-bit Raspberry Pi OS, or build onnxruntime yourself, then rerun." >&2
  [ "$dry" = 1 ] || exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "setup-raspberry-pi: python3 is missing; this script installs it with apt." >&2
fi

echo "== apt: python3, numpy, venv"
run "${sudo_cmd[@]}" apt-get update -q
run "${sudo_cmd[@]}" apt-get install -y -q python3 python3-numpy python3-venv python3-pip

echo "== virtualenv $venv (sees the system numpy) + onnxruntime from pip"
run python3 -m venv --system-site-packages "$venv"
run "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade onnxruntime

if [ "$governor" = 1 ]; then
  echo "== cpufreq governor -> performance (until reboot)"
  for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
    [ -e "$g" ] || continue
    if [ "$dry" = 1 ]; then echo "+ echo performance > $g"; else echo performance | "${sudo_cmd[@]}" tee "$g" >/dev/null; fi
  done
fi

echo "== check"
if [ "$dry" = 1 ]; then
  echo "+ $venv/bin/python -c 'import numpy, onnxruntime'"
else
  "$venv/bin/python" - <<'EOF'
import os
import platform

import numpy
import onnxruntime

print(f"python {platform.python_version()}  numpy {numpy.__version__}  onnxruntime {onnxruntime.__version__}")
print("providers:", ", ".join(onnxruntime.get_available_providers()))
gov = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
if os.path.exists(gov):
    g = open(gov).read().strip()
    print("cpufreq governor:", g, "" if g == "performance" else "(rerun with --performance-governor for steadier timings)")
EOF
fi

# A profile's python is run through the login shell, so "~/..." works there.
shown="$venv"
case "$venv" in "$HOME"/*) shown="~/${venv#"$HOME"/}" ;; esac
echo
echo "Done. In your profile's [connection] table set:"
echo "  python = \"$shown/bin/python\""
