#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (run as root): sets up the host
# (packages, libvirtd), checks formatting and lints, then runs every test: unit tests, the
# qcow2 reader against qemu-img, the filesystem core, and real FUSE mounts over a real
# libvirtd. Fails on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup-host.sh

step() { echo "== $*" >&2; }
step "cargo fmt --check"
cargo fmt --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
step "man page lint"
mandoc -Tlint -W warning man/virtsnapfs.1
step "cargo test"
# Test binaries run one after another (mount_reconnect restarts libvirtd); tests inside a
# binary run in parallel.
set +e
cargo test --no-fail-fast 2>&1 | tee /tmp/virtsnapfs-test.log
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' /tmp/virtsnapfs-test.log | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/virtsnapfs-test.log | awk '{s += $1} END {print s + 0}')
echo "virtsnapfs: $passed passed, $failed failed"
exit "$status"
