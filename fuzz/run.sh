#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 20), one after the other, one job
# each: the CI run (.ci/run) and, with a larger SECONDS, the long run. Arguments after
# SECONDS go to libFuzzer (e.g. `-runs=3000000`). Installs cargo-fuzz when it is
# missing, seeds the corpora (seed.sh), builds once, then fuzzes; fails when a target
# crashed, with its input in fuzz/artifacts/<target>/ and its log in fuzz/artifacts/.
# A target's dictionary, when there is one, is fuzz/dict/<target>.dict.
#
# No sanitizer: rollgate forbids unsafe code and ASan would not see into the C parts
# (libgit2) anyway, so it would only halve the speed and lengthen the build. Overflow
# checks and debug assertions stay on (cargo fuzz's default).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=(plan webhook trailers judge)

# libFuzzer's flags are nightly-only (-Zsanitizer and friends): stable takes them with this.
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz --version 0.13.2
fi
./seed.sh >/dev/null
cargo fuzz build --sanitizer none

mkdir -p artifacts
failed=()
for t in "${targets[@]}"; do
  log=artifacts/$t.log
  dict=()
  if [ -f "dict/$t.dict" ]; then dict=(-dict="dict/$t.dict"); fi
  echo "== fuzz $t: ${seconds}s"
  if cargo fuzz run --sanitizer none "$t" -- ${dict[@]+"${dict[@]}"} \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "$@" >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "$log" || true
  else
    echo "== FAILED: fuzz target $t; its input is in fuzz/artifacts/$t/, the log in fuzz/$log:" >&2
    grep -v -E '^#[0-9]+' "$log" | tail -n 60 >&2
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "== fuzz targets that crashed: ${failed[*]}" >&2
  exit 1
fi
