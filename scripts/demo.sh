#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (run as root): sets up the host, builds and
# installs virtsnapfs, creates a demo domain if there is no domain yet (or if --create-demo is
# given), mounts every libvirt domain on /mnt/virtsnapfs and prints what to try.
#
# The demo domain "virtsnapfs-demo" has a 64 MiB qcow2 disk with a GPT whose partition 1 holds
# an ext4 filesystem (files/vda1: /etc/hostname, /etc/app.conf, /var/log/setup.log,
# /home/admin) whose files differ between its snapshots: two internal ones (installed, then
# configured, taken as of a running guest: its journal needs recovery, so the kernel refuses
# to mount it read-only while files/ shows it replayed), then an external one
# (before-upgrade), then the "upgrade" in the live overlay, which also deletes a file that
# only the snapshots still have.
#
#   VIRTSNAPFS_BIN  install this binary instead of building target/release/virtsnapfs
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
MNT=${VIRTSNAPFS_MOUNTPOINT:-/mnt/virtsnapfs}
DEMO=virtsnapfs-demo
DIR=/var/lib/libvirt/images/$DEMO
URI=qemu:///system

create_demo=0
[ "${1:-}" = "--create-demo" ] && create_demo=1

bash scripts/setup-host.sh
if [ -z "${VIRTSNAPFS_BIN:-}" ]; then
  echo "demo: building virtsnapfs (release)" >&2
  cargo build --release --quiet
fi
install -m 0755 "${VIRTSNAPFS_BIN:-${CARGO_TARGET_DIR:-target}/release/virtsnapfs}" /usr/local/bin/virtsnapfs

virsh() { command virsh -q -c "$URI" "$@"; }

# The demo disk's states are made by the kernel's own ext4 on a raw working copy
# ($WORK/disk.raw, loop-mounted at the partition's offset); after each state, only the 64 KiB
# chunks that differ from what the domain's top image already holds ($WORK/written.raw) are
# written into it, so internal snapshots keep sharing everything else.
WORK=$DIR/work
OFFSET=$((1 << 20))  # partition 1 starts at sector 2048
guest_mount() { # makes $WORK/m the guest's filesystem (read-write)
  mount -t ext4 -o "loop,offset=$OFFSET,sizelimit=$PART_SIZE" "$WORK/disk.raw" "$WORK/m"
}
commit_state() { # image [state]: writes the chunks of state (default disk.raw) that differ
  local image=$1 state=${2:-$WORK/disk.raw} cmds=() chunk
  for chunk in $(cmp -l "$WORK/written.raw" "$state" | awk '{print int(($1 - 1) / 65536)}' | uniq); do
    dd if="$state" of="$WORK/chunk$chunk" bs=64k skip="$chunk" count=1 status=none
    cmds+=(-c "write -s $WORK/chunk$chunk $((chunk * 65536)) 64k")
  done
  [ ${#cmds[@]} -gt 0 ] && qemu-io -f qcow2 "${cmds[@]}" "$image" >/dev/null
  rm -f "$WORK"/chunk*
  cp --sparse=always "$state" "$WORK/written.raw"
}

make_demo() {
  echo "demo: creating domain $DEMO in $DIR" >&2
  virsh destroy "$DEMO" >/dev/null 2>&1 || true
  virsh undefine "$DEMO" --snapshots-metadata >/dev/null 2>&1 || true
  rm -rf "$DIR"
  mkdir -p "$WORK/m" "$WORK/tree/etc" "$WORK/tree/home/admin" "$WORK/tree/var/log"
  echo demo > "$WORK/tree/etc/hostname"
  echo "mode=fresh" > "$WORK/tree/etc/app.conf"
  echo "Installed on $(date -u +%F)." > "$WORK/tree/home/admin/notes.txt"
  printf 'alias ll="ls -l"\n' > "$WORK/tree/home/admin/.bashrc"
  chown -R 1000:1000 "$WORK/tree/home/admin"
  chmod 0750 "$WORK/tree/home/admin"
  # A 64 MiB disk with a GPT whose partition 1 holds the ext4 filesystem (files/vda1).
  truncate -s 64M "$WORK/disk.raw"
  echo 'label: gpt
start=2048, type=linux, name=root' | sfdisk -q "$WORK/disk.raw"
  PART_SIZE=$(($(sfdisk -l -o Sectors "$WORK/disk.raw" | tail -1) * 512))
  truncate -s "$PART_SIZE" "$WORK/fs.raw"
  mkfs.ext4 -q -F -L demo -d "$WORK/tree" "$WORK/fs.raw"
  dd if="$WORK/fs.raw" of="$WORK/disk.raw" bs=1M seek="$OFFSET" oflag=seek_bytes \
    conv=notrunc,sparse status=none
  rm -rf "$WORK/fs.raw" "$WORK/tree"
  qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$DIR/vda.qcow2"
  cp --sparse=always "$WORK/disk.raw" "$WORK/written.raw"
  local virt_type=qemu
  [ -e /dev/kvm ] && virt_type=kvm
  cat > "$DIR/domain.xml" <<XML
<domain type='$virt_type'>
  <name>$DEMO</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DIR/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
XML
  virsh define "$DIR/domain.xml" >/dev/null
  virsh snapshot-create-as "$DEMO" installed "fresh install" >/dev/null

  # "configured" is taken as a snapshot of a running guest is: while the guest's ext4 has
  # committed its last writes to the journal but not yet to their places (a copy of the disk
  # while the loop mount is still up). Its journal needs recovery: the kernel refuses to mount
  # it read-only; files/ shows it as the kernel would after recovery.
  guest_mount
  echo "mode=configured" > "$WORK/m/etc/app.conf"
  echo "setup started $(date -u +%FT%TZ)" > "$WORK/m/var/log/setup.log"
  sync -f "$WORK/m"
  echo "setup finished $(date -u +%FT%TZ)" >> "$WORK/m/var/log/setup.log"
  sync -f "$WORK/m"
  cp --sparse=always "$WORK/disk.raw" "$WORK/dirty.raw"
  umount "$WORK/m"
  dd if="$WORK/dirty.raw" of="$WORK/part.raw" bs=1M skip="$OFFSET" iflag=skip_bytes status=none
  if ! dumpe2fs -h "$WORK/part.raw" 2>/dev/null | grep -q needs_recovery; then
    echo "demo: the configured state's journal came out clean; its snapshot is not dirty" >&2
  fi
  rm -f "$WORK/part.raw"
  commit_state "$DIR/vda.qcow2" "$WORK/dirty.raw"
  rm -f "$WORK/dirty.raw"
  virsh snapshot-create-as "$DEMO" configured \
    "configured, taken while the guest was running (journal needs recovery)" >/dev/null

  # The guest "boots" again (the mount replays the journal) and changes the notes.
  cp --sparse=always "$WORK/written.raw" "$WORK/disk.raw"
  guest_mount
  echo "Configured. Upgrade next." > "$WORK/m/home/admin/notes.txt"
  umount "$WORK/m"
  commit_state "$DIR/vda.qcow2"
  virsh snapshot-create-as "$DEMO" before-upgrade "external, before the upgrade" \
    --disk-only --atomic >/dev/null

  local overlay
  overlay=$(virsh domblklist "$DEMO" | awk '$1 == "vda" {print $2}')
  guest_mount
  echo "mode=upgraded version=2" > "$WORK/m/etc/app.conf"
  rm "$WORK/m/var/log/setup.log"
  umount "$WORK/m"
  commit_state "$overlay"
  rm -rf "$WORK"
}

if [ "$create_demo" = 1 ] || [ -z "$(virsh list --all --name | grep -v '^$' || true)" ]; then
  make_demo
fi

mkdir -p "$MNT"
if ! grep -q " $MNT fuse" /proc/mounts; then
  virtsnapfs -c "$URI" "$MNT"
fi

cat <<EOF

virtsnapfs is mounted on $MNT (log: /var/log/virtsnapfs.log). Try:

  ls $MNT
  find $MNT/$DEMO
  readlink $MNT/$DEMO/current
  cat $MNT/$DEMO/snapshots/installed/snapshot.xml
  cp --sparse=always $MNT/$DEMO/snapshots/installed/vda.raw /tmp/installed.raw

  # The guest's files, as of each snapshot and now:
  ls -la $MNT/$DEMO/snapshots/installed/files/vda1/home/admin
  diff $MNT/$DEMO/snapshots/installed/files/vda1/etc/app.conf $MNT/$DEMO/live/files/vda1/etc/app.conf

  # Recover a file the live disk no longer has, from a snapshot ("configured" was taken as of
  # a running guest: its journal needs recovery, which virtsnapfs replays in memory):
  cp -a $MNT/$DEMO/snapshots/installed/configured/files/vda1/var/log/setup.log /tmp/
  cat /tmp/setup.log

  # Done:
  umount $MNT
EOF
echo "$ ls -R $MNT/$DEMO/snapshots" 
ls -R "$MNT/$DEMO/snapshots" 2>/dev/null || ls "$MNT"
