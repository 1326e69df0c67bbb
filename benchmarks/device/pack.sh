#!/usr/bin/env bash
# Packs the packages of wheels.txt (Python 3.12, manylinux x86-64) into .gpu-site/site312.tar.xz, for the lent GPU
# machine, whose image lacks them and reaches no package index. xz keeps the archive near 24 MB where the wheels
# take 37 MB: with this repository's 31 MB of tracked files it stays under the device tool's 64 MiB per call.
#
#   bash benchmarks/device/pack.sh            # here, with the package registry reachable; then run.sh there
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
target=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${target[@]}" -d "$tmp/wheels" -r benchmarks/device/wheels.txt
python3 -m pip install -q --no-deps --no-compile "${target[@]}" --target "$tmp/site" "$tmp"/wheels/*.whl
mkdir -p .gpu-site
tar -cJf .gpu-site/site312.tar.xz.part -C "$tmp/site" .
mv .gpu-site/site312.tar.xz.part .gpu-site/site312.tar.xz
du -h .gpu-site/site312.tar.xz
