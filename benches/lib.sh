# Shared by the benchmarks (sourced, never run): the binary to measure, timing, caches, and
# the one results table every benchmark prints. The sourcing script sets URI and BENCH (its
# name in log lines) first.
#
#   VIRTSNAPFS_BIN   the binary to measure (default target/release/virtsnapfs, built here)

virsh() { command virsh -q -c "$URI" "$@"; }
log() { echo "$BENCH: $*" >&2; }
now() { date +%s.%N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# The binary: VIRTSNAPFS_BIN, or a release build of this checkout (where cargo puts it: a
# CARGO_TARGET_DIR set elsewhere would otherwise leave an older build measured).
if [ -n "${VIRTSNAPFS_BIN:-}" ]; then
  BIN=$VIRTSNAPFS_BIN
else
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/virtsnapfs
fi

# One row of the results table, with its ratio to the goal; `print_results` prints them all.
RESULTS=()
result() { # name ours reference unit goal-ratio(- for a context row) direction(ge|le)
  local ratio pass goal
  ratio=$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.2f", a / b }')
  if [ "$5" = - ]; then
    pass=""; goal="(context, no goal)"
  elif [ "$6" = ge ]; then
    pass=$(awk -v r="$ratio" -v g="$5" 'BEGIN { print (r >= g) ? "PASS" : "FAIL" }')
    goal="goal >= ${5}x"
  else
    pass=$(awk -v r="$ratio" -v g="$5" 'BEGIN { print (r <= g) ? "PASS" : "FAIL" }')
    goal="goal <= ${5}x"
  fi
  RESULTS+=("$(printf '%-50s %12s %12s %-9s %6sx  %s  %s' "$1" "$2" "$3" "$4" "$ratio" "$goal" "$pass")")
  log "$1: $2 vs $3 $4 (ratio $ratio)"
}
note() { RESULTS+=("$*"); log "$*"; }
print_results() {
  printf '%-50s %12s %12s %-9s %7s\n' "measure" "virtsnapfs" "reference" "unit" "ratio"
  for r in "${RESULTS[@]}"; do echo "$r"; done
}
