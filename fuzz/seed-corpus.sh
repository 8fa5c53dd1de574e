#!/usr/bin/env bash
# Builds a seed corpus of small, valid qcow2 images (every feature the reader handles) for the
# qcow2_image fuzz target, so the fuzzer starts from real structures instead of random bytes.
set -euo pipefail
out=${1:-"$(dirname "$0")/corpus/qcow2_image"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
n=0
seed() { cp "$1" "$out/seed-$n-$(basename "$1")"; n=$((n + 1)); }
for opts in compat=0.10 compat=1.1 cluster_size=512 cluster_size=2M extended_l2=on \
  compression_type=zstd refcount_bits=1 data_file=d.raw "data_file=r.raw,data_file_raw=on"; do
  rm -f i.qcow2 d.raw r.raw
  qemu-img create -q -f qcow2 -o "$opts" i.qcow2 1M
  qemu-io -f qcow2 -c 'write -P 1 0 8k' -c 'write -z 64k 4k' i.qcow2 >/dev/null
  case "$opts" in data_file*) ;; *)
    qemu-io -f qcow2 -c 'write -c -P 2 128k 64k' i.qcow2 >/dev/null 2>&1 || true
    qemu-img snapshot -c s1 i.qcow2 2>/dev/null || true ;; # refcount_bits=1 cannot hold a snapshot
  esac
  seed i.qcow2
done
qemu-img create -q -f qcow2 -b /nonexistent -F raw -u o.qcow2 1M
seed o.qcow2
echo "wrote $n seeds to $out"
