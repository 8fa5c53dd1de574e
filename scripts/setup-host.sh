#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (run as root) for building, testing and running virtsnapfs:
# packages, the users libvirt's QEMU driver expects, a root-run QEMU (so /dev/kvm works without
# a libvirt-qemu group on the device), and a running virtlogd + libvirtd without systemd.
# Idempotent: safe to run again on a machine that is already set up.
set -euo pipefail

log() { echo "setup-host: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  # qemu-system-x86 (7.2) replaces a newer qemu-utils from backports: install both together so
  # qemu-img / qemu-io / qemu-nbd stay present and match the emulator.
  qemu-system-x86 qemu-utils qemu-system-common
  fuse3 pkg-config mandoc e2fsprogs fio zstd
  # Guest-filesystem tests: sfdisk makes MBR and GPT disks, setfattr puts xattrs on the trees
  # mkfs -d copies (e2fsprogs gives mkfs.ext*, debugfs, dumpe2fs, e2fsck).
  fdisk attr
  # LVM2 tests: pvcreate, vgcreate and vgcfgrestore make the physical volumes and metadata.
  lvm2
  # FAT tests: mkfs.vfat and fsck.fat make and check the images; mtools (mcopy, mdir, mattrib,
  # mshowfat) fills them and is the oracle, as this kernel has no vfat module.
  dosfstools mtools
  # XFS tests: mkfs.xfs makes the images, xfs_io fragments files, xfs_logprint shows a log is
  # dirty; the kernel's own XFS (loop mounts) is the oracle.
  xfsprogs
  # NTFS tests: mkntfs makes the images, ntfs-3g fills them and is the oracle.
  ntfs-3g
  # fincore, with which tests count a file's cached pages (util-linux pulls it in on Debian 12;
  # named so the tests' need stays written down).
  util-linux-extra
  # systemd-analyze, with which a test checks the shipped unit (systemd need not be running).
  systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# qemu-utils may be "installed" but from another release than qemu-system-x86: check the tools too.
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || missing+=(qemu-utils)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # Pin qemu-utils to the emulator's version: a newer qemu-utils (backports, in some machine
  # images) "Breaks" the bookworm qemu-system-common, and apt then refuses the whole install.
  qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  pinned=()
  for p in "${PACKAGES[@]}"; do
    case "$p" in
      qemu-utils | qemu-system-common | qemu-system-x86) pinned+=("$p=$qver") ;;
      *) pinned+=("$p") ;;
    esac
  done
  apt-get install -y -q --no-install-recommends --allow-downgrades "${pinned[@]}" >/dev/null
fi

# Rust toolchain: the machine image ships rustup's cargo; fall back to PATH lookup.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { log "cargo not found: install a Rust toolchain (rustup) first"; exit 1; }

# Users and groups that libvirt-daemon-system would create.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

# QEMU runs as root: /dev/kvm is root-only on these machines, and images stay root-owned.
mkdir -p /etc/libvirt
conf=/etc/libvirt/qemu.conf
marker="# virtsnapfs host settings"
if ! grep -qF "$marker" "$conf" 2>/dev/null; then
  cat >>"$conf" <<CONF
$marker
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
CONF
fi

mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt/images /var/lib/libvirt/qemu

if ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 1 100); do
  if virsh -q -c qemu:///system version >/dev/null 2>&1; then
    log "libvirtd answers on qemu:///system"
    exit 0
  fi
  sleep 0.2
done
log "libvirtd did not answer within 20 s; see /var/log/libvirt/"
exit 1
