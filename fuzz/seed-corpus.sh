#!/usr/bin/env bash
# Builds seed corpora of small, valid inputs so the fuzzers start from real structures instead
# of random bytes: qcow2 images (every feature the reader handles) for qcow2_image, and ext2/3/4
# images, a dirty journal, an MBR and a GPT disk for guest_ext4. Usage:
#   fuzz/seed-corpus.sh [CORPUS_DIR]    (default fuzz/corpus; one folder per target)
# Needs qemu-img, qemu-io, mkfs.ext2/3/4 (e2fsprogs, with debugfs), sfdisk and setfattr.
set -euo pipefail
root=${1:-"$(dirname "$0")/corpus"}
mkdir -p "$root/qcow2_image" "$root/guest_ext4"
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
echo "wrote $n seeds to $root"
