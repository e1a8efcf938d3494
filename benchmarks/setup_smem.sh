#!/bin/sh
# Install smem (the Debian/Ubuntu package), the reference measure_vs_smem.py
# compares gcfork with. measure_vs_smem.py runs this when smem is missing.
set -eu
if command -v smem >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "smem is missing and this is not a Debian/Ubuntu system: install smem with its package manager" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "smem is missing; run: sudo apt-get install -y smem" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get install -y smem >/dev/null 2>&1 ||
    { $as_root apt-get update >/dev/null && $as_root apt-get install -y smem >/dev/null; }
command -v smem
