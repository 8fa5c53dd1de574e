#!/usr/bin/env bash
# Guest-files benchmark: virtsnapfs's files/ (its own ext4 reader) against what a user would
# do instead, on the same disk in one run: (a) the kernel's ext4 on a read-only loop device
# over virtsnapfs's own vda.raw (what users do without files/), (b) the kernel's ext4 on a
# loop device over a local raw copy (the ceiling), (c) libguestfs's guestmount when its
# appliance boots here. The guest: an ext4 filesystem of 20,000+ files and 1.2 GiB (made with
# mkfs.ext4 -d) on partition 1 of a GPT disk, in a 2-layer qcow2 chain (base + an overlay of
# changes) whose top is the disk of a libvirt domain with an internal snapshot taken after the
# changes. Measured through that snapshot's files/ (and (a) over its vda.raw); live/files/,
# whose pages the kernel drops at each open, gets context rows.
# Prints every figure with its ratio to the goal, and context rows (no goal). Run as root on
# a host set up by scripts/setup-host.sh. About 7 minutes, 5 when the images are kept.
#
#   VSFS_BENCH_DIR   work directory (default /var/lib/libvirt/images/vsfs-files-bench), removed after
#   VSFS_BENCH_KEEP=1  keep the images and the domain between runs (faster re-runs)
#   VIRTSNAPFS_BIN   the binary to measure (default target/release/virtsnapfs, built here)
#   VSFS_BENCH_TURNS turns per side and row (default 7; the rows are their medians)
#   VSFS_FILES_FS    ext4 (default: the tree in ext4 on partition 1, shown as files/vda1) or
#                    xfs-lvm (the tree in XFS on a logical volume bench/root of an LVM2 PV on
#                    partition 1, as RHEL-family guests install, shown as files/bench-root;
#                    the kernel's XFS is then the reference)
set -euo pipefail
# The benchmark's mounts stay in a mount namespace of its own: libvirt runs each QEMU in a
# copy of the host's, and a copy taken while one of our filesystems is mounted keeps it
# mounted, and its last writes unflushed, after our umount.
if [ -z "${VSFS_BENCH_OWN_NS:-}" ]; then
  VSFS_BENCH_OWN_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
FS=${VSFS_FILES_FS:-ext4}
case "$FS" in
  ext4) SUFFIX=""; FSTYPE=ext4; VOL=vda1; RO_OPTS=ro ;;
  # Two mounts of one XFS (a) and (b) share its UUID, which the kernel refuses without nouuid.
  xfs-lvm) SUFFIX=-xfs; FSTYPE=xfs; VOL=bench-root; RO_OPTS=ro,nouuid ;;
  *) echo "files-bench: VSFS_FILES_FS must be ext4 or xfs-lvm, not $FS" >&2; exit 2 ;;
esac
W=${VSFS_BENCH_DIR:-/var/lib/libvirt/images/vsfs-files-bench$SUFFIX}
URI=qemu:///system
D=vsfs-files-bench$SUFFIX
MNT=$W/mnt          # virtsnapfs for the warm rows (and (a) warm over it)
FRESH=$W/mnt-fresh  # virtsnapfs mounted afresh for each cold turn
AMNT=$W/mnt-a       # (a) the kernel's filesystem over our vda.raw
BMNT=$W/mnt-b       # (b) the kernel's filesystem over a local raw copy
GMNT=$W/mnt-g       # (c) guestmount
# Turns per side and row: a cold row varies by up to a third from one turn to the next on a
# shared host, so an odd number of turns well above 3 keeps the median from following one.
TURNS=${VSFS_BENCH_TURNS:-7}
BENCH=files-bench
. benches/lib.sh
mounted() { grep -q " $1 " /proc/mounts; }
mkdir -p "$W" "$MNT" "$FRESH" "$AMNT" "$BMNT" "$GMNT"

LOOPS=()
PIDS=()
cleanup() {
  set +e
  for m in "$GMNT" "$AMNT" "$AMNT-cold" "$BMNT"; do mounted "$m" && umount "$m"; done
  fusermount3 -u "$GMNT" 2>/dev/null
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  # Loop devices of a turn cut short (made in a subshell): those over a file under $W.
  losetup -l -n -O NAME,BACK-FILE | awk -v w="$W/" 'index($2, w) == 1 {print $1}' |
    while read -r l; do losetup -d "$l"; done
  for m in "$FRESH" "$MNT"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do mounted "$m" || break; fusermount3 -u "$m" 2>/dev/null || sleep 0.3; done
    mounted "$m" && fusermount3 -u -z "$m"
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -f /dev/shm/vsfs-files-bench-*
  if [ "${VSFS_BENCH_KEEP:-0}" != 1 ]; then
    virsh undefine "$D" --snapshots-metadata >/dev/null 2>&1
    rm -rf "$W"
  fi
}
trap cleanup EXIT

OFFSET=$((1 << 20))       # partition 1 starts at sector 2048
FSSIZE=$((2560 << 20))    # 2.5 GiB filesystem
# xfs-lvm: the PV's partition holds the label and metadata area, then the LV's extents from
# pe_start (1 MiB, lvm2's default alignment) on; the LV's one linear segment starts at PE 0.
PE_START=$((1 << 20))
EXTENT=$((4 << 20))
PARTSIZE=$FSSIZE
FSOFF=$OFFSET             # where the filesystem starts on the disk
if [ "$FS" = xfs-lvm ]; then
  PARTSIZE=$((PE_START + FSSIZE + EXTENT))
  FSOFF=$((OFFSET + PE_START))
fi

# make_fs TREE FS_IMAGE: the filesystem of the tree, FSSIZE bytes.
make_fs() {
  truncate -s "$FSSIZE" "$2"
  if [ "$FS" = ext4 ]; then
    mkfs.ext4 -q -F -L bench -d "$1" "$2"
  else
    # mkfs.xfs has no option to copy a tree in: fill it through the kernel, unmounted cleanly.
    mkfs.xfs -q -f -L bench "$2"
    local dev
    dev=$(losetup -f --show "$2")
    mount -t xfs "$dev" "$AMNT"
    cp -a "$1/." "$AMNT/"
    umount "$AMNT"
    losetup -d "$dev"
  fi
}

# place_fs FS_IMAGE DISK: partition 1 of a GPT disk; for xfs-lvm an LVM2 PV there whose VG
# "bench" has one linear LV "root" over the filesystem. lvm2 runs with a private
# configuration that sees only this loop device and keeps no backups (this host may have no
# device-mapper: lvcreate cannot run, so the LV is written into the metadata by vgcfgrestore).
place_fs() {
  truncate -s $((OFFSET + PARTSIZE + (1 << 20))) "$2"
  if [ "$FS" = ext4 ]; then
    printf 'label: gpt\nstart=2048, size=%d, type=linux\n' $((PARTSIZE / 512)) | sfdisk -q "$2"
  else
    printf 'label: gpt\nstart=2048, size=%d, type=lvm\n' $((PARTSIZE / 512)) | sfdisk -q "$2"
    local dev sys=$W/lvm
    dev=$(losetup -o "$OFFSET" --sizelimit "$PARTSIZE" -f --show "$2")
    LOOPS+=("$dev")
    mkdir -p "$sys"
    cat > "$sys/lvm.conf" <<CONF
devices { filter = [ "a|^$dev\$|", "r|.*|" ] global_filter = [ "a|^$dev\$|", "r|.*|" ] use_devicesfile = 0 hints = "none" obtain_device_list_from_udev = 0 }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
CONF
    # lvm2's notes about the missing device-mapper are kept out of the output unless it fails.
    lvm_() {
      LVM_SYSTEM_DIR=$sys LVM_SUPPRESS_FD_WARNINGS=1 lvm "$@" 2>"$sys/stderr" ||
        { cat "$sys/stderr" >&2; log "lvm $1 failed"; exit 1; }
    }
    lvm_ pvcreate -q -y --dataalignment 1m "$dev" >/dev/null
    lvm_ vgcreate -q -s $((EXTENT >> 20))m bench "$dev" >/dev/null
    [ "$(lvm_ pvs --noheadings --units b --nosuffix -o pe_start "$dev" | tr -d ' ')" = "$PE_START" ] ||
      { log "unexpected pe_start on the PV"; exit 1; }
    lvm_ vgcfgbackup -q -f "$sys/vg.txt" bench >/dev/null
    local pv
    pv=$(awk '/physical_volumes/ {f = 1; next} f && NF {print $1; exit}' "$sys/vg.txt")
    python3 - "$sys/vg.txt" "$pv" $((FSSIZE / EXTENT)) <<'PY'
import sys
path, pv, count = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
lv = ("\tlogical_volumes {\n\t\troot {\n\t\t\tid = \"LV0000-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\"\n"
      "\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = 1\n"
      "\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = " + count + "\n"
      "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\"" + pv + "\", 0]\n"
      "\t\t\t}\n\t\t}\n\t}\n")
# The VG's section is the file's last: the LV goes before its closing brace.
end = text.rindex("\n}")
open(path, "w").write(text[:end + 1] + lv + text[end + 1:])
PY
    lvm_ vgcfgrestore -q -f "$sys/vg.txt" bench >/dev/null
    losetup -d "$dev"
    LOOPS=()
    rm -rf "$sys"
  fi
  dd if="$1" of="$2" bs=1M seek="$FSOFF" oflag=seek_bytes conv=notrunc,sparse status=none
}
SNAP=s1

# ---- images ---------------------------------------------------------------------------------
if [ ! -e "$W/ready" ] || ! virsh dominfo "$D" >/dev/null 2>&1; then
  log "building images (20,000 files and 1.2 GiB in $FS, GPT, base + overlay, a domain)"
  virsh undefine "$D" --snapshots-metadata >/dev/null 2>&1 || true
  rm -rf "$W/tree" "$W"/*.raw "$W"/*.qcow2 "$W/ready"
  t0=$(now)
  # The tree: 300 directories (20 x 15), 20,000 files of 0-64 KiB, 4 files of 160 MiB;
  # contents are slices of a 64 MiB random pool, all drawn from one seed.
  python3 - "$W/tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(15)
pool = rng.randbytes(64 << 20)
def chunk(n):
    o = rng.randrange(0, len(pool) - n + 1)
    return pool[o:o + n]
dirs = [os.path.join(root, f"d{a:02}", f"s{b:02}") for a in range(20) for b in range(15)]
for d in dirs:
    os.makedirs(d)
for i in range(20000):
    with open(os.path.join(dirs[i % len(dirs)], f"f{i:05}.dat"), "wb") as f:
        f.write(chunk(rng.randrange(0, 65537)))
os.makedirs(os.path.join(root, "large"))
for i in range(4):
    with open(os.path.join(root, "large", f"big{i}.bin"), "wb") as f:
        for _ in range(160):
            f.write(chunk(1 << 20))
PY
  log "tree: $(find "$W/tree" | wc -l) entries, $(du -sm --apparent-size "$W/tree" | cut -f1) MiB ($(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s)"
  make_fs "$W/tree" "$W/fs.raw"
  rm -rf "$W/tree"
  place_fs "$W/fs.raw" "$W/disk.raw"
  rm -f "$W/fs.raw"
  qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/base.qcow2"
  # The overlay: changes made by the kernel's filesystem on a copy (200 files rewritten, 100
  # deleted, a new directory of 500 files, 16 MiB appended to a large file), and only the
  # 64 KiB chunks that differ written into it.
  cp --sparse=always "$W/disk.raw" "$W/changed.raw"
  dev=$(losetup -o "$FSOFF" --sizelimit "$FSSIZE" -f --show "$W/changed.raw")
  LOOPS+=("$dev")
  mount -t "$FSTYPE" "$dev" "$AMNT"
  for i in $(seq 0 100 19900); do
    head -c $((i + 1000)) /dev/urandom > "$AMNT/d$(printf %02d $(((i % 300) / 15)))/s$(printf %02d $((i % 15)))/f$(printf %05d "$i").dat"
  done
  for i in $(seq 50 200 19850); do
    rm -f "$AMNT/d$(printf %02d $(((i % 300) / 15)))/s$(printf %02d $((i % 15)))/f$(printf %05d "$i").dat"
  done
  mkdir "$AMNT/new"
  for i in $(seq 1 500); do head -c $((i * 50)) /dev/urandom > "$AMNT/new/n$i"; done
  head -c 16M /dev/urandom >> "$AMNT/large/big3.bin"
  umount "$AMNT"
  losetup -d "$dev"
  LOOPS=()
  python3 - "$W/disk.raw" "$W/changed.raw" "$W/chunks" <<'PY'
import sys
a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
out, i = open(sys.argv[3], "w"), 0
while True:
    x, y = a.read(65536), b.read(65536)
    if not y:
        break
    if x != y:
        out.write(f"{i}\n")
    i += 1
PY
  qemu-img create -q -f qcow2 -F qcow2 -b "$W/base.qcow2" "$W/top.qcow2"
  cmds=()
  while read -r c; do
    dd if="$W/changed.raw" of="$W/chunk.$c" bs=64k skip="$c" count=1 status=none
    cmds+=(-c "write -s $W/chunk.$c $((c * 65536)) 64k")
    if [ ${#cmds[@]} -ge 400 ]; then qemu-io -f qcow2 "${cmds[@]}" "$W/top.qcow2" >/dev/null </dev/null; cmds=(); fi
  done < "$W/chunks"
  [ ${#cmds[@]} -gt 0 ] && qemu-io -f qcow2 "${cmds[@]}" "$W/top.qcow2" >/dev/null
  log "overlay: $(wc -l < "$W/chunks") chunks of 64 KiB changed"
  rm -f "$W"/chunk.* "$W/chunks" "$W/disk.raw"
  # (b)'s local raw copy: the chain's bytes as qemu-img reads them.
  qemu-img convert -O raw "$W/top.qcow2" "$W/local.raw"
  cmp -s "$W/changed.raw" "$W/local.raw" || { log "the overlay does not hold the changed disk: $(cmp "$W/changed.raw" "$W/local.raw" | head -1)"; exit 1; }
  rm -f "$W/changed.raw"
  type=qemu
  [ -e /dev/kvm ] && type=kvm
  cat > "$W/$D.xml" <<XML
<domain type='$type'><name>$D</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$W/top.qcow2'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>
XML
  virsh define "$W/$D.xml" >/dev/null
  virsh snapshot-create-as "$D" "$SNAP" >/dev/null   # internal, in top.qcow2
  log "images built in $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
  touch "$W/ready"
fi
log "chain: $(qemu-img info --backing-chain "$W/top.qcow2" | grep -c '^image:') layers, $(du -sm "$W/base.qcow2" "$W/top.qcow2" | awk '{printf "%s %s MiB; ", $2, $1}')"

# ---- mounts ---------------------------------------------------------------------------------
mount_vsfs() { # mountpoint -> pid of its daemon
  "$BIN" -f -c "$URI" "$1" >/dev/null 2>>"$W/virtsnapfs.log" &
  local pid=$!
  for _ in $(seq 1 100); do mounted "$1" && break; sleep 0.1; done
  mounted "$1" || { log "virtsnapfs did not mount on $1 (see $W/virtsnapfs.log)"; exit 1; }
  echo "$pid"
}
unmount_vsfs() { # mountpoint pid: notes the daemon's peak RSS, unmounts, waits for it to exit
  awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$2/status" >> "$W/hwm"
  for _ in 1 2 3 4 5 6 7 8 9 10; do fusermount3 -u "$1" 2>/dev/null && break; sleep 0.2; done
  for _ in $(seq 1 100); do kill -0 "$2" 2>/dev/null || break; sleep 0.05; done
}
loop_mount() { # file mountpoint -> loop device, the guest filesystem mounted read-only on it
  local dev
  dev=$(losetup -r -o "$FSOFF" --sizelimit "$FSSIZE" -f --show "$1")
  mount -t "$FSTYPE" -o "$RO_OPTS" "$dev" "$2"
  echo "$dev"
}
loop_umount() { # mountpoint device
  umount "$1"
  losetup -d "$2"
}
: > "$W/hwm"
VSFS_PID=$(mount_vsfs "$MNT")
PIDS+=("$VSFS_PID")
# Measured through the snapshot (the state users recover files from; it holds the same bytes
# as live/, taken after the overlay's changes); live/ gets a context row below.
VIEW=snapshots/$SNAP
OURS=$MNT/$D/$VIEW/files/$VOL
ls "$MNT/$D/$VIEW/files/" | grep -qx "$VOL" || { log "files/ of $D shows no $VOL"; exit 1; }
ADEV=$(loop_mount "$MNT/$D/$VIEW/vda.raw" "$AMNT"); LOOPS+=("$ADEV")
BDEV=$(loop_mount "$W/local.raw" "$BMNT"); LOOPS+=("$BDEV")

# ---- measurements ---------------------------------------------------------------------------

# One timed run of a workload in DIR: prints "rate count" (entries/s for find, MB/s for tar),
# and keeps the count to check that every side saw the same tree.
COUNTS=$W/counts
: > "$COUNTS"
run() { # find|tar dir side
  local t0 t1 n
  t0=$(now)
  if [ "$1" = find ]; then
    n=$(cd "$2" && find . | wc -l)
  else
    n=$(cd "$2" && tar cf - . | wc -c)
  fi
  t1=$(now)
  echo "$1 $3 $n" >> "$COUNTS"
  if [ "$1" = find ]; then
    awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }'
  else
    awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) / 1e6 }'
  fi
}
# A cold turn of one side: nothing of the tree in any cache. virtsnapfs is mounted afresh (so
# its own caches are empty too), also under (a), whose loop device reads our vda.raw. Each
# side's filesystem is opened before the caches are dropped, as a mount opens the kernel's:
# for ours, files/VOL is entered (what that costs is the first-byte row).
cold() { # find|tar ours|a|b
  local pid dev r
  case "$2" in
    ours)
      pid=$(mount_vsfs "$FRESH")
      stat "$FRESH/$D/$VIEW/files/$VOL" > /dev/null
      drop_caches
      r=$(run "$1" "$FRESH/$D/$VIEW/files/$VOL" ours)
      unmount_vsfs "$FRESH" "$pid" ;;
    a)
      pid=$(mount_vsfs "$FRESH")
      dev=$(loop_mount "$FRESH/$D/$VIEW/vda.raw" "$AMNT-cold")
      drop_caches
      r=$(run "$1" "$AMNT-cold" a)
      loop_umount "$AMNT-cold" "$dev"
      unmount_vsfs "$FRESH" "$pid" ;;
    b)
      drop_caches
      r=$(run "$1" "$BMNT" b) ;;
  esac
  echo "$r"
}
mkdir -p "$AMNT-cold"
declare -A COLD WARM
for w in find tar; do
  o=""; a=""; b=""
  for turn in $(seq 1 $TURNS); do
    order="ours a b"
    [ $((turn % 2)) = 0 ] && order="b a ours"
    for side in $order; do
      v=$(cold "$w" "$side")
      case $side in ours) o+=" $v" ;; a) a+=" $v" ;; b) b+=" $v" ;; esac
    done
  done
  COLD[$w,ours]=$(printf '%s\n' $o | median)
  COLD[$w,a]=$(printf '%s\n' $a | median)
  COLD[$w,b]=$(printf '%s\n' $b | median)
  log "cold $w turns: ours$o | (a)$a | (b)$b"
  # Warm: one pass of each side first, then the turns, the sides alternating.
  run "$w" "$OURS" ours > /dev/null; run "$w" "$AMNT" a > /dev/null; run "$w" "$BMNT" b > /dev/null
  o=""; a=""; b=""
  for turn in $(seq 1 $TURNS); do
    if [ $((turn % 2)) = 1 ]; then
      o+=" $(run "$w" "$OURS" ours)"; a+=" $(run "$w" "$AMNT" a)"; b+=" $(run "$w" "$BMNT" b)"
    else
      b+=" $(run "$w" "$BMNT" b)"; a+=" $(run "$w" "$AMNT" a)"; o+=" $(run "$w" "$OURS" ours)"
    fi
  done
  WARM[$w,ours]=$(printf '%s\n' $o | median)
  WARM[$w,a]=$(printf '%s\n' $a | median)
  WARM[$w,b]=$(printf '%s\n' $b | median)
  log "warm $w turns: ours$o | (a)$a | (b)$b"
done
for w in find tar; do
  unit=entries/s; [ "$w" = tar ] && unit=MB/s
  label="find . | wc -l"; [ "$w" = tar ] && label="tar cf - . | wc -c"
  for c in cold warm; do
    if [ $c = cold ]; then o=${COLD[$w,ours]}; a=${COLD[$w,a]}; b=${COLD[$w,b]}
    else o=${WARM[$w,ours]}; a=${WARM[$w,a]}; b=${WARM[$w,b]}; fi
    result "$label, $c, vs (a) loop over vda.raw" "$o" "$a" "$unit" 1.0 ge
    result "$label, $c, vs (b) loop over raw copy" "$o" "$b" "$unit" 0.5 ge
  done
done
# What bounds the warm tar: reading cached pages. The large files alone, in 1 MiB reads (few
# calls, so this is the page cache's cost per byte, not a call's): the kernel keeps ext4's
# and XFS's cached data in large folios, FUSE's in 4 KiB pages.
cached_read() { # dir -> MB/s of reading its large/ files from the page cache
  local t0 t1 n
  n=$(cat "$1"/large/* | wc -c)
  t0=$(now)
  for f in "$1"/large/*; do dd if="$f" of=/dev/null bs=1M status=none; done
  t1=$(now)
  awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) / 1e6 }'
}
o=""; a=""
for _ in $(seq 1 $TURNS); do o+=" $(cached_read "$OURS")"; a+=" $(cached_read "$AMNT")"; done
log "cached read of large/ turns: ours$o | (a)$a"
result "  read of cached large/, 1 MiB reads, vs (a)" "$(printf '%s\n' $o | median)" \
  "$(printf '%s\n' $a | median)" MB/s - ge
# live/files/: the same bytes, but a live file may change between two opens, so the kernel
# drops its cached pages at each open and every warm read comes from the daemon again.
LIVE=$MNT/$D/live/files/$VOL
for w in find tar; do
  run "$w" "$LIVE" live > /dev/null
  l=""
  for _ in 1 2 3; do l+=" $(run "$w" "$LIVE" live)"; done
  log "live/files warm $w turns:$l"
  unit=entries/s; [ "$w" = tar ] && unit=MB/s
  result "  $w, warm, through live/files/ vs (a)" "$(printf '%s\n' $l | median)" "${WARM[$w,a]}" "$unit" - ge
done
# Every side must have seen the same tree: one entry count, one archive size.
for w in find tar; do
  n=$(awk -v w="$w" '$1 == w {print $3}' "$COUNTS" | sort -u | wc -l)
  [ "$n" = 1 ] || note "WARNING: the sides disagree on $w: $(awk -v w="$w" '$1 == w {print $2 "=" $3}' "$COUNTS" | sort -u | tr '\n' ' ')"
done
ENTRIES=$(awk '$1 == "find" {print $3; exit}' "$COUNTS")
TARBYTES=$(awk '$1 == "tar" {print $3; exit}' "$COUNTS")

# First byte of a file in a snapshot nothing has opened yet: a fresh mount, caches dropped,
# then `head -c1` of a file deep in the tree (lookups from the mount's root, the snapshot's
# filesystem opened, one block read).
FILE=$(cd "$BMNT" && find d07/s03 -type f -size +4k | sort | head -1)
t=""
for _ in $(seq 1 $TURNS); do
  pid=$(mount_vsfs "$FRESH")
  drop_caches
  t0=$(now); head -c1 "$FRESH/$D/snapshots/$SNAP/files/$VOL/$FILE" > /dev/null; t1=$(now)
  t+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')"
  unmount_vsfs "$FRESH" "$pid"
done
log "first byte turns (ms):$t"
first=$(printf '%s\n' $t | median)
result "first byte, never-opened snapshot (median)" "$first" 50 ms 1 le
max=$(printf '%s\n' $t | sort -n | tail -1)
result "  slowest of $TURNS turns" "$max" 50 ms - le
# The same with head itself and the mount's lookups of the snapshot tree, for context.
pid=$(mount_vsfs "$FRESH")
drop_caches
t0=$(now); stat "$FRESH/$D/snapshots/$SNAP/vda.raw" > /dev/null; t1=$(now)
result "  stat of the snapshot's vda.raw, same state" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')" 50 ms - le
unmount_vsfs "$FRESH" "$pid"

awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$VSFS_PID/status" >> "$W/hwm"
HWM=$(sort -n "$W/hwm" | tail -1)
result "peak RSS of the daemon, any mount above" "$HWM" 100 MiB - le

# ---- (c) libguestfs -------------------------------------------------------------------------
GUESTFS="did not run: guestmount is not installed (apt-get install libguestfs-tools)"
if command -v guestmount >/dev/null; then
  log "trying guestmount (its appliance has 120 s to boot)"
  t0=$(now)
  # Its own session, so that a hung appliance is stopped with everything it started.
  setsid guestmount --no-fork --format=qcow2 -a "$W/top.qcow2" --ro -m /dev/sda1 "$GMNT" \
    > "$W/guestmount.log" 2>&1 &
  GPID=$!
  for _ in $(seq 1 1200); do
    mounted "$GMNT" && break
    kill -0 "$GPID" 2>/dev/null || break
    sleep 0.1
  done
  if mounted "$GMNT"; then
    boot=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    drop_caches
    gf=$(run find "$GMNT" guestmount); gff=$(run find "$GMNT" guestmount)
    drop_caches
    gt=$(run tar "$GMNT" guestmount); gtt=$(run tar "$GMNT" guestmount)
    result "(c) guestmount: find, cold, ours vs it" "${COLD[find,ours]}" "$gf" entries/s - ge
    result "(c) guestmount: find, warm, ours vs it" "${WARM[find,ours]}" "$gff" entries/s - ge
    result "(c) guestmount: tar, cold, ours vs it" "${COLD[tar,ours]}" "$gt" MB/s - ge
    result "(c) guestmount: tar, warm, ours vs it" "${WARM[tar,ours]}" "$gtt" MB/s - ge
    GUESTFS="ran: appliance up and mounted in $boot s (one turn each, not included in goals)"
    fusermount3 -u "$GMNT" || true
    for _ in $(seq 1 100); do kill -0 "$GPID" 2>/dev/null || break; sleep 0.1; done
  else
    why=$(grep -m1 -i 'error' "$W/guestmount.log" || grep -v '^$' "$W/guestmount.log" | tail -1)
    if kill -0 "$GPID" 2>/dev/null; then
      why="no mount after 120 s${why:+ (last output: $why)}"
      kill -- -"$GPID" 2>/dev/null || true
      sleep 1
      kill -9 -- -"$GPID" 2>/dev/null || true
    fi
    GUESTFS="did not run: ${why:-guestmount exited without mounting}"
  fi
fi
note "(c) libguestfs guestmount: $GUESTFS"

echo
echo "virtsnapfs guest-files benchmark, $(date -u +%F), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)"
where="ext4 on GPT partition 1"
[ "$FS" = xfs-lvm ] && where="XFS on LV bench/root of an LVM2 PV on GPT partition 1"
echo "tree: $ENTRIES entries, tar of $((TARBYTES >> 20)) MiB, $where in base.qcow2 + overlay; medians of $TURNS turns"
echo "through $VIEW/files/$VOL; (a) kernel $FSTYPE on a read-only loop device over virtsnapfs's $VIEW/vda.raw; (b) the same over a local raw copy"
print_results
