#!/usr/bin/env bash
# Builds seed corpora of small, valid inputs so the fuzzers start from real structures instead
# of random bytes: qcow2 images (every feature the reader handles) for qcow2_image, ext2/3/4
# images, a dirty journal, an MBR and a GPT disk for guest_ext4, and FAT12/16/32 images (trailing
# zeros cut: guest_fat reads past an input's end as zeros) for guest_fat, small LVM2 disks for
# guest_lvm, a small XFS for guest_xfs, a dirty XFS log for guest_xfs_log, and a small NTFS
# for guest_ntfs. Usage:
#   fuzz/seed-corpus.sh [CORPUS_DIR]    (default fuzz/corpus; one folder per target)
# Needs qemu-img, qemu-io, mkfs.ext2/3/4 (e2fsprogs, with debugfs), sfdisk, setfattr, mkfs.vfat
# (dosfstools), mtools, perl, xfsprogs and ntfs-3g; the XFS and NTFS seeds need root (loop
# and ntfs-3g mounts).
set -euo pipefail
root=${1:-"$(dirname "$0")/corpus"}
mkdir -p "$root/qcow2_image" "$root/guest_ext4" "$root/guest_fat"
root=$(cd "$root" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
n=0
seed() { cp "$2" "$root/$1/seed-$n-$(basename "$2")"; n=$((n + 1)); }

# qcow2_image
for opts in compat=0.10 compat=1.1 cluster_size=512 cluster_size=2M extended_l2=on \
  compression_type=zstd refcount_bits=1 data_file=d.raw "data_file=r.raw,data_file_raw=on"; do
  rm -f i.qcow2 d.raw r.raw
  qemu-img create -q -f qcow2 -o "$opts" i.qcow2 1M
  qemu-io -f qcow2 -c 'write -P 1 0 8k' -c 'write -z 64k 4k' i.qcow2 >/dev/null
  case "$opts" in data_file*) ;; *)
    qemu-io -f qcow2 -c 'write -c -P 2 128k 64k' i.qcow2 >/dev/null 2>&1 || true
    qemu-img snapshot -c s1 i.qcow2 2>/dev/null || true ;; # refcount_bits=1 cannot hold a snapshot
  esac
  seed qcow2_image i.qcow2
done
qemu-img create -q -f qcow2 -b /nonexistent -F raw -u o.qcow2 1M
seed qcow2_image o.qcow2

# guest_ext4: a small tree with one of each kind of file the reader handles (a fragmented
# file has an extent tree of depth 1; a large directory has an htree).
mkdir -p t/d/e
echo hello >t/a
head -c 20000 /dev/zero | tr '\0' x >t/d/big # past the 12 direct blocks of a 1 KiB block map
truncate -s 300k t/sparse && echo tail >>t/sparse
echo g >t/d/e/g
ln t/a t/hardlink
ln -s d/e/g t/fast-link
ln -s "$(printf 'long/%.0s' {1..40})target" t/slow-link
mkfifo t/fifo
mknod t/null c 1 3
for i in $(seq 1 30); do : >"t/d/entry-$i"; done
mkdir t/many # hard links, so no inodes: enough names for an htree index after e2fsck -D
for i in $(seq 1 120); do ln t/a "t/many/a-longer-name-for-the-htree-$i"; done
for i in $(seq 0 9); do printf x | dd of=t/fragmented bs=1 seek=$((i * 8192)) conv=notrunc status=none; done
setfattr -n user.colour -v blue t/a
setfattr -n user.big -v "$(head -c 300 /dev/zero | tr '\0' v)" t/d/big

# mkfs_seed NAME SIZE MKFS ARGS...: an image made from the tree.
mkfs_seed() {
  local name=$1 size=$2 mkfs=$3
  shift 3
  rm -f "$name"
  truncate -s "$size" "$name"
  "$mkfs" -q -F -d t "$@" "$name" >/dev/null
  e2fsck -fyD "$name" >/dev/null 2>&1 || true # index the large directory
  seed guest_ext4 "$name"
}
mkfs_seed ext4-1k.raw 256k mkfs.ext4 -b 1024 -N 64 -O ^has_journal
mkfs_seed ext4-inline.raw 256k mkfs.ext4 -b 1024 -N 64 -O ^has_journal,inline_data
mkfs_seed ext4-small-inodes.raw 256k mkfs.ext4 -b 1024 -N 64 -I 128 -O ^has_journal,^metadata_csum,^64bit
mkfs_seed ext2-1k.raw 256k mkfs.ext2 -b 1024 -N 64
mkfs_seed ext3-1k.raw 2M mkfs.ext3 -b 1024 -N 64

# A dirty journal, written by debugfs: two committed transactions (new contents for a's data
# block and for the root directory's inode table block) and a revoke, not yet replayed.
rm -f dirty.raw
truncate -s 2M dirty.raw
mkfs.ext4 -q -F -d t -b 1024 -N 64 dirty.raw
blk() { debugfs -R "$1" dirty.raw 2>/dev/null | grep -o "$2" | head -1 | grep -o '[0-9]*$'; }
data=$(blk "stat /a" '(0):[0-9]*')
itable=$(blk "imap <2>" 'located at block [0-9]*')
head -c 1024 /dev/zero | tr '\0' J >newdata
dd if=dirty.raw of=itable.blk bs=1024 skip="$itable" count=1 status=none
printf 'jo\njw -b %s newdata\njw -b %s itable.blk\njw -r %s\njc\n' "$data" "$itable" "$((data + 1))" \
  >cmds
debugfs -w -f cmds dirty.raw >/dev/null 2>&1
dumpe2fs -h dirty.raw 2>/dev/null | grep -q needs_recovery
seed guest_ext4 dirty.raw

# Partitioned disks (512-byte sectors): a filesystem inside the first partition of each.
rm -f fs.raw
truncate -s 256k fs.raw
mkfs.ext4 -q -F -d t -b 1024 -N 64 -O ^has_journal fs.raw
# MBR: primary 1 (ext4), an extended partition holding logical 5 (ext4 again) and 6 (empty).
truncate -s 0 mbr.raw && truncate -s 900k mbr.raw
printf 'label: dos\nstart=64, size=512, type=83\nstart=584, size=1100, type=5\nstart=592, size=512, type=83\nstart=1112, size=64, type=82\n' |
  sfdisk -q mbr.raw
dd if=fs.raw of=mbr.raw bs=512 seek=64 conv=notrunc status=none
dd if=fs.raw of=mbr.raw bs=512 seek=592 conv=notrunc status=none
seed guest_ext4 mbr.raw
# GPT: one Linux partition (ext4) and one empty.
truncate -s 0 gpt.raw && truncate -s 350k gpt.raw
printf 'label: gpt\nstart=40, size=512, type=L\nstart=552, size=64, type=L\n' | sfdisk -q gpt.raw
dd if=fs.raw of=gpt.raw bs=512 seek=40 conv=notrunc status=none
seed guest_ext4 gpt.raw

# guest_fat: a tree with long names (one of several entries), 8.3 names with the lowercase
# flags, Unicode, nested directories, a directory of several clusters, an empty file, a file of
# several clusters and a fragmented one (written into the gaps deleted files left).
export MTOOLS_SKIP_CHECK=1 TZ=UTC LC_ALL=C.UTF-8
mkdir -p f/Sub/deeper/deepest f/big
echo hi >f/readme.txt
echo x >f/lower.TXT
echo y >f/UPPER.txt
echo z >f/MixedCase.Txt
echo u >"f/héllo wörld 名前.txt"
echo l >"f/a_file_name_long_enough_for_several_long_name_entries.text"
: >f/empty
echo leaf >f/Sub/deeper/deepest/leaf
head -c 5000 /dev/zero | tr '\0' d >f/Sub/several-clusters
for i in $(seq 1 40); do : >"f/big/entry number $i with a long name"; done
head -c 600 /dev/zero | tr '\0' s >small
head -c 2500 /dev/zero | tr '\0' g >frag
# fat_seed NAME SIZE ARGS...: mkfs.vfat ARGS, the tree copied in, a fragmented file made,
# trailing zeros cut.
fat_seed() {
  local name=$1 size=$2
  shift 2
  rm -f "$name"
  truncate -s "$size" "$name"
  mkfs.vfat "$@" "$name" >/dev/null
  mcopy -s -i "$name" f/* ::/
  for i in 1 2 3 4; do mcopy -i "$name" small "::/gap$i"; done
  mdel -i "$name" ::/gap1 ::/gap3
  # FAT32 allocates from FSInfo's next-free hint: "unknown" makes it fill the gaps.
  if [ "$(dd if="$name" bs=1 skip=82 count=5 status=none)" = FAT32 ]; then
    printf '\377\377\377\377' | dd of="$name" bs=1 seek=$((512 + 492)) conv=notrunc status=none
  fi
  mcopy -i "$name" frag ::/fragmented
  truncate -s "$(perl -0777 -ne 's/\0+\z//; print length' "$name")" "$name"
  seed guest_fat "$name"
}
fat_seed fat12.raw 1M -F 12 -s 1
fat_seed fat16.raw 3M -F 16 -s 1
fat_seed fat32.raw 33M -F 32 -s 1 -f 1

# guest_lvm: small LVM2 disks (needs root, loop devices and lvm2; this kernel needs no
# device-mapper: the LVs are written into the metadata by vgcfgrestore). PVs of 1 MiB with a
# 32 KiB metadata area and 16 KiB extents; a 256 KiB ext4 in each LV.
mkdir -p "$root/guest_lvm"
lvm_sys=$tmp/lvm-sys
mkdir -p "$lvm_sys"
lvm_loops=()
lvm_vg=
lvm_cleanup() {
  [ -n "$lvm_vg" ] && LVM_SYSTEM_DIR=$lvm_sys lvm vgremove -ff -y "$lvm_vg" >/dev/null 2>&1 || true
  for l in "${lvm_loops[@]}"; do
    LVM_SYSTEM_DIR=$lvm_sys lvm pvremove -ff -y "$l" >/dev/null 2>&1 || true
    losetup -d "$l" || true
  done
  lvm_loops=()
  lvm_vg=
}
trap 'lvm_cleanup; rm -rf "$tmp"' EXIT
lvm() {
  LVM_SYSTEM_DIR=$lvm_sys LVM_SUPPRESS_FD_WARNINGS=1 command lvm "$@" >/dev/null 2>&1
}
# lvm_pv IMG OFFSET SIZE: a PV on a loop device over that byte range of IMG.
lvm_pv() {
  local l
  l=$(losetup -f --show -o "$2" --sizelimit "$3" "$1")
  lvm_loops+=("$l")
  local accept=""
  for x in "${lvm_loops[@]}"; do accept+="\"a|^$x\$|\", "; done
  cat >"$lvm_sys/lvm.conf" <<CONF
devices { filter = [ $accept"r|.*|" ] global_filter = [ $accept"r|.*|" ] use_devicesfile = 0 hints = "none" obtain_device_list_from_udev = 0 pv_min_size = 512 }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
CONF
  lvm pvcreate -y --metadatasize 32k --dataalignment 4k "$l"
}
# lvm_restore LVS: the VG's metadata with the logical_volumes block LVS added.
lvm_restore() {
  lvm vgcfgbackup -f "$tmp/vg.txt" "$lvm_vg"
  python3 -c 'import sys; t=open(sys.argv[1]).read(); i=t.rindex("}"); open(sys.argv[1],"w").write(t[:i]+sys.argv[2]+t[i:])' "$tmp/vg.txt" "$1"
  lvm vgcfgrestore --force -f "$tmp/vg.txt" "$lvm_vg"
}
lv() { # NAME SEGMENT-BODIES... (each "COUNT|BODY")
  local name=$1 i=0 start=0 out
  shift
  out="$name { id = \"${name:0:1}aaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = $# "
  for seg in "$@"; do
    i=$((i + 1))
    out+="segment$i { start_extent = $start extent_count = ${seg%%|*} ${seg#*|} } "
    start=$((start + ${seg%%|*}))
  done
  echo "$out}"
}
lin() { echo "$1|type = \"striped\" stripe_count = 1 stripes = [\"$2\", $3]"; }
# put IMG BYTE-OFFSET-OF-EXTENT-0 LV-KIB PE [KIB]: KIB KiB of fs.raw from LV-KIB to extent PE.
put() { dd if=fs.raw of="$1" bs=1k skip="$3" seek=$(($2 / 1024 + $4 * 16)) count="${5:-16}" conv=notrunc status=none; }
pe_start() { LVM_SYSTEM_DIR=$lvm_sys command lvm pvs --noheadings --units b --nosuffix -o pe_start "$1" 2>/dev/null | tr -d ' '; }

# Whole disk: a linear LV of two segments (extents 20-27, then 0-7) and a striped one
# (two stripes of 4 KiB chunks over extents 30-37 and 40-47).
truncate -s 0 lvm-disk.raw && truncate -s 1M lvm-disk.raw
lvm_vg=fz$$d
lvm_pv lvm-disk.raw 0 1048576
lvm vgcreate -s 16k "$lvm_vg" "${lvm_loops[0]}"
lvm_restore "logical_volumes { $(lv root "$(lin 8 pv0 20)" "$(lin 8 pv0 0)") $(lv st "16|type = \"striped\" stripe_count = 2 stripe_size = 8 stripes = [\"pv0\", 30, \"pv0\", 40]") }"
base=$(pe_start "${lvm_loops[0]}")
cp --sparse=always lvm-disk.raw lvm-disk.out
lvm_cleanup
mv lvm-disk.out lvm-disk.raw
for i in 0 1 2 3 4 5 6 7; do put lvm-disk.raw "$base" $((i * 16)) $((20 + i)); done
for i in 8 9 10 11 12 13 14 15; do put lvm-disk.raw "$base" $((i * 16)) $((i - 8)); done
for c in $(seq 0 63); do # chunk c of the striped LV: stripe c%2, row c/2
  pe=$(( c % 2 == 0 ? 30 : 40 ))
  dd if=fs.raw of=lvm-disk.raw bs=1k skip=$((c * 4)) seek=$((base / 1024 + pe * 16 + (c / 2) * 4)) count=4 conv=notrunc status=none
done
seed guest_lvm lvm-disk.raw

# MBR: two PVs on partitions 1 and 2, an LV spanning both, and a thin pool and thin LV
# (not read) beside it.
truncate -s 0 lvm-mbr.raw && truncate -s 1600k lvm-mbr.raw
printf 'label: dos\nstart=8, size=1536, type=8e\nstart=1544, size=1536, type=8e\n' | sfdisk -q lvm-mbr.raw
lvm_vg=fz$$m
lvm_pv lvm-mbr.raw 4096 786432
lvm_pv lvm-mbr.raw 790528 786432
lvm vgcreate -s 16k "$lvm_vg" "${lvm_loops[@]}"
thin="$(lv pool "4|type = \"thin-pool\" metadata = \"pool_tmeta\" pool = \"pool_tdata\" transaction_id = 1 chunk_size = 128 discards = \"passdown\" zero_new_blocks = 1") $(lv thin "8|type = \"thin\" thin_pool = \"pool\" transaction_id = 0 device_id = 1")"
hidden="pool_tmeta { id = \"Taaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" status = [\"READ\", \"WRITE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 30] } } pool_tdata { id = \"Daaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" status = [\"READ\", \"WRITE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 31] } }"
lvm_restore "logical_volumes { $(lv span "$(lin 10 pv1 2)" "$(lin 6 pv0 1)") $thin $hidden }"
base0=$(pe_start "${lvm_loops[0]}")
base1=$(pe_start "${lvm_loops[1]}")
cp --sparse=always lvm-mbr.raw lvm-mbr.out
lvm_cleanup
mv lvm-mbr.out lvm-mbr.raw
put lvm-mbr.raw $((790528 + base1)) 0 2 160
put lvm-mbr.raw $((4096 + base0)) 160 1 96
seed guest_lvm lvm-mbr.raw

# guest_xfs and guest_xfs_log: a small XFS with 1 KiB blocks (the variables xfsprogs' own test
# suite sets let mkfs.xfs make it under 300 MB) filled through a loop mount: a few hundred
# names in one directory (leaf and node form), a file with an attribute btree, a fragmented
# file, a remote symlink. guest_xfs gets its first 3 MiB; guest_xfs_log the superblock sector
# and the log of a copy left dirty (changes forced into the log, then the filesystem shut down).
mkdir -p "$root/guest_xfs" "$root/guest_xfs_log" "$root/guest_ntfs"
xfs_mkfs() { TEST_DIR=/tmp TEST_DEV=/dev/null QA_CHECK_FS=1 mkfs.xfs -q -f "$@"; }
truncate -s 64M xfs.raw
xfs_mkfs -b size=1024 -d agcount=2 xfs.raw
mkdir -p xm
mount -o loop xfs.raw xm
mkdir xm/names
for i in $(seq 1 400); do : >"xm/names/entry-$i-with-a-longer-name"; done
: >xm/attrs
for i in $(seq 1 200); do setfattr -n "user.a$i" -v "value $i" xm/attrs; done
for i in $(seq 0 2 200); do dd if=/dev/zero of=xm/fragmented bs=1k count=1 seek="$i" conv=notrunc status=none; sync; done
ln -s "$(printf 'target/%.0s' $(seq 1 60))" xm/remote-link
umount xm
head -c 3M xfs.raw >xfs-b1k.raw
seed guest_xfs xfs-b1k.raw
mount -o loop xfs.raw xm
xfs_io -x -c freeze -c thaw xm
for i in $(seq 1 50); do echo "$i" >"xm/names/late-$i"; done
rm xm/names/entry-1*
xfs_io -x -c "shutdown -f" xm
umount xm
# sb_logstart is an AG-encoded block number: xfs_db converts it to a byte offset.
logstart=$(xfs_db -r -c 'sb 0' -c 'p logstart' xfs.raw | awk '{print $3}')
logblocks=$(xfs_db -r -c 'sb 0' -c 'p logblocks' xfs.raw | awk '{print $3}')
logbyte=$(xfs_db -r -c "convert fsb $logstart byte" xfs.raw | sed 's/.*(\([0-9]*\)).*/\1/')
{ head -c 512 xfs.raw; dd if=xfs.raw bs=1024 iflag=skip_bytes skip="$logbyte" count="$logblocks" status=none; } >xfs-log.raw
seed guest_xfs_log xfs-log.raw

# guest_ntfs: a small NTFS (1 KiB clusters) filled through ntfs-3g: a directory of 120
# entries, a hard link, a symlink, an alternate data stream, a compressed directory's file,
# a file with holes; the backup boot sector and trailing zeros cut (guest_ntfs reads past the
# input's end as zeros).
truncate -s 4M ntfs.raw
mkntfs -q -F -Q -c 1024 ntfs.raw 2>/dev/null # (its notes on boot geometry: not a boot disk)
mkdir -p nm
ntfs-3g ntfs.raw nm
mkdir nm/many nm/packed
for i in $(seq 1 120); do echo "$i" >"nm/many/file number $i"; done
echo linked >nm/one
ln nm/one nm/two
ln -s one nm/link
setfattr -n user.stream -v "an alternate data stream" nm/one
setfattr -n system.ntfs_attrib_be -v 0x00000800 nm/packed
head -c 20000 /dev/zero | tr '\0' c >nm/packed/compressed
dd if=/dev/zero of=nm/holes bs=1k count=1 seek=300 status=none
umount nm
truncate -s -512 ntfs.raw # the boot sector's backup, after the zeros
truncate -s "$(perl -0777 -ne 's/\0+\z//; print length' ntfs.raw)" ntfs.raw
seed guest_ntfs ntfs.raw

echo "wrote $n seeds to $root"
