#!/bin/sh
# Install smem (Debian/Ubuntu package), the reference measure_vs_smem.py compares with.
set -eu
if command -v smem >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "smem is missing; run: sudo apt-get install -y smem" >&2
    exit 1
fi
apt-get install -y smem >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y smem >/dev/null; }
command -v smem
