#!/usr/bin/env bash
# Test-harness cycles per second through the mount against the same loop with virsh, measured
# in one run on the same kind of domain: each cycle writes 1 MiB into the disk, then reverts to
# a clean internal snapshot, with `mv SNAPSHOT DOMAIN/live/` (virtsnapfs) or
# `virsh snapshot-revert` (the reference). Offline (qemu-io writes the image) and running
# (QEMU's own qemu-io writes through the guest's disk; a revert restores RAM too). Failed
# cycles are counted and make the run fail. Run as root on a host set up by
# scripts/setup-host.sh.
#
#   VSFS_HARNESS_OFFLINE  cycles offline, per side (default 200)
#   VSFS_HARNESS_RUNNING  cycles running, per side (default 10)
#   VSFS_HARNESS_TURNS    alternating turns per side, medians compared (default 3)
#   VIRTSNAPFS_BIN        the virtsnapfs binary (default: target/release, built first)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
W=/var/lib/libvirt/images/vsfs-harness-bench
URI=qemu:///system
MNT=$W/mnt
OFFLINE=${VSFS_HARNESS_OFFLINE:-200}
RUNNING=${VSFS_HARNESS_RUNNING:-10}
TURNS=${VSFS_HARNESS_TURNS:-3}
BENCH=harness-bench
. benches/lib.sh
rm -rf "$W"
mkdir -p "$W" "$MNT"
DAEMON=
cleanup() {
  # Domains first: libvirt starts QEMU in a mount namespace of its own, which holds a copy of
  # the mount (on a host whose mounts do not propagate) until QEMU exits.
  for d in hb-offline hb-running; do
    virsh destroy "$d" >/dev/null 2>&1 || true
  done
  fusermount3 -u -z "$MNT" 2>/dev/null || true
  [ -n "$DAEMON" ] && wait "$DAEMON" 2>/dev/null || true
  for d in hb-offline hb-running; do
    virsh undefine "$d" --snapshots-metadata >/dev/null 2>&1 || true
  done
  rm -rf "$W"
}
trap cleanup EXIT

define() { # name
  local type=qemu
  [ -e /dev/kvm ] && type=kvm
  qemu-img create -q -f qcow2 "$W/$1.qcow2" 64M
  qemu-io -f qcow2 -c 'write -P 0x5a 0 4M' "$W/$1.qcow2" >/dev/null
  cat > "$W/$1.xml" <<XML
<domain type='$type'><name>$1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$W/$1.qcow2'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>
XML
  virsh define "$W/$1.xml" >/dev/null
}

define hb-offline
define hb-running
virsh snapshot-create-as hb-offline clean >/dev/null
virsh start hb-running >/dev/null
virsh snapshot-create-as hb-running clean >/dev/null

"$BIN" -f -c "$URI" "$MNT" 2>"$W/daemon.log" &
DAEMON=$!
for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.1; done

write_offline() { qemu-io -f qcow2 -c "write -P $1 0 1M" "$W/hb-offline.qcow2" >/dev/null; }
write_running() {
  virsh qemu-monitor-command hb-running --hmp \
    "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P $1 0 1M\"" >/dev/null
}
revert_mount() { mv "$MNT/$1/snapshots/clean" "$MNT/$1/live/"; }
revert_virsh() { virsh snapshot-revert "$1" clean >/dev/null; }

FAILED=0
loop() { # domain writer reverter cycles -> cycles per second
  local t0 t1 fails=0
  t0=$(now)
  for i in $(seq "$4"); do
    "$2" $((i % 250 + 1))
    "$3" "$1" 2>>"$W/errors" || fails=$((fails + 1))
  done
  t1=$(now)
  FAILED=$((FAILED + fails))
  awk -v a="$t0" -v b="$t1" -v n="$4" 'BEGIN { printf "%.2f\n", n / (b - a) }'
}

row() { # name domain writer cycles
  local ours=() ref=()
  for _ in $(seq "$TURNS"); do
    ours+=("$(loop "$2" "$3" revert_mount "$4")")
    ref+=("$(loop "$2" "$3" revert_virsh "$4")")
  done
  result "$1" "$(printf '%s\n' "${ours[@]}" | median)" "$(printf '%s\n' "${ref[@]}" | median)" \
    cycles/s 1.0 ge
}
log "offline: $TURNS turns of $OFFLINE cycles per side; running: $TURNS turns of $RUNNING"
row "harness cycles/s, offline (write 1M + revert)" hb-offline write_offline "$OFFLINE"
row "harness cycles/s, running (write 1M + revert)" hb-running write_running "$RUNNING"
print_results
if [ "$FAILED" -ne 0 ]; then
  log "$FAILED cycles failed:"
  sort "$W/errors" | uniq -c >&2
  exit 1
fi
log "0 cycles failed"
