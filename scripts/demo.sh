#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (run as root): sets up the host, builds and
# installs virtsnapfs, creates a demo domain if there is no domain yet (or if --create-demo is
# given), mounts every libvirt domain on /mnt/virtsnapfs and prints what to try.
#
# The demo domain "virtsnapfs-demo" has a 64 MiB qcow2 disk holding an ext4 filesystem whose
# files differ between its snapshots: two internal ones (installed, configured), then an
# external one (before-upgrade), then the "upgrade" in the live overlay, which also deletes a
# file that only the snapshots still have.
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
echo "demo: building virtsnapfs (release)" >&2
cargo build --release --quiet
install -m 0755 target/release/virtsnapfs /usr/local/bin/virtsnapfs

virsh() { command virsh -q -c "$URI" "$@"; }

# Applies debugfs commands (stdin) to the current state of qcow2 image $1, writing back only
# the 64 KiB chunks that changed, so internal snapshots keep sharing everything else.
change_files() {
  local image=$1 work
  work=$(mktemp -d)
  qemu-img convert -U -O raw "$image" "$work/new.raw"
  cp --sparse=always "$work/new.raw" "$work/old.raw"
  debugfs -w -f - "$work/new.raw" >/dev/null 2>&1
  local cmds=()
  for chunk in $(cmp -l "$work/old.raw" "$work/new.raw" | awk '{print int(($1 - 1) / 65536)}' | uniq); do
    dd if="$work/new.raw" of="$work/chunk$chunk" bs=64k skip="$chunk" count=1 status=none
    cmds+=(-c "write -s $work/chunk$chunk $((chunk * 65536)) 64k")
  done
  [ ${#cmds[@]} -gt 0 ] && qemu-io -f qcow2 "${cmds[@]}" "$image" >/dev/null
  rm -rf "$work"
}

make_demo() {
  echo "demo: creating domain $DEMO in $DIR" >&2
  virsh destroy "$DEMO" >/dev/null 2>&1 || true
  virsh undefine "$DEMO" --snapshots-metadata >/dev/null 2>&1 || true
  rm -rf "$DIR"
  mkdir -p "$DIR/tree/etc" "$DIR/tree/home/admin" "$DIR/tree/var/log"
  echo demo > "$DIR/tree/etc/hostname"
  echo "mode=fresh" > "$DIR/tree/etc/app.conf"
  echo "Installed on $(date -u +%F)." > "$DIR/tree/home/admin/notes.txt"
  truncate -s 64M "$DIR/disk.raw"
  mkfs.ext4 -q -F -L demo -d "$DIR/tree" "$DIR/disk.raw"
  qemu-img convert -f raw -O qcow2 "$DIR/disk.raw" "$DIR/vda.qcow2"
  rm -rf "$DIR/disk.raw" "$DIR/tree"
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

  local f
  f=$(mktemp)
  echo "mode=configured" > "$f.conf"
  echo "setup finished $(date -u +%FT%TZ)" > "$f.log"
  change_files "$DIR/vda.qcow2" <<CMDS
rm /etc/app.conf
write $f.conf /etc/app.conf
write $f.log /var/log/setup.log
CMDS
  virsh snapshot-create-as "$DEMO" configured "configured" >/dev/null

  echo "Configured. Upgrade next." > "$f.notes"
  change_files "$DIR/vda.qcow2" <<CMDS
rm /home/admin/notes.txt
write $f.notes /home/admin/notes.txt
CMDS
  virsh snapshot-create-as "$DEMO" before-upgrade "external, before the upgrade" \
    --disk-only --atomic >/dev/null

  local overlay
  overlay=$(virsh domblklist "$DEMO" | awk '$1 == "vda" {print $2}')
  echo "mode=upgraded version=2" > "$f.conf"
  change_files "$overlay" <<CMDS
rm /etc/app.conf
write $f.conf /etc/app.conf
rm /var/log/setup.log
CMDS
  rm -f "$f" "$f.conf" "$f.log" "$f.notes"
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

  # Recover a file the live disk no longer has, from a snapshot:
  dev=\$(losetup -r -f --show $MNT/$DEMO/snapshots/installed/configured/vda.raw)
  mkdir -p /tmp/configured && mount -o ro \$dev /tmp/configured
  cat /tmp/configured/var/log/setup.log
  umount /tmp/configured && losetup -d \$dev

  # Done:
  umount $MNT
EOF
echo "$ ls -R $MNT/$DEMO/snapshots" 
ls -R "$MNT/$DEMO/snapshots" 2>/dev/null || ls "$MNT"
