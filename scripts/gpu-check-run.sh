#!/usr/bin/env bash
# The GPU half of scripts/gpu-check.sh (packed as gpu-check/run.sh): runs the packed
# test binaries under gpu-env.sh and writes one log per step to $OUT.
# Exit status: 0 all passed, 1 a step failed, 2 no usable GPU (nothing run).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/logs}
mkdir -p "$out"
if [ -f "$here/gpu-env.sh" ]; then
  # gpu-env.sh is not written for `set -u`.
  set +u
  # shellcheck disable=SC1091
  source "$here/gpu-env.sh" >"$out/gpu-env.log" 2>&1
  set -u
fi
{ date -u; cat "$here/commit" 2>/dev/null; nvidia-smi 2>&1 || true; } >"$out/machine.log"

if ! "$here/cim-cuda" info >"$out/info.log" 2>&1; then
  echo "gpu-check: no usable GPU here: $(cat "$out/info.log")"
  exit 2
fi
cat "$out/info.log"

status=0
run() {  # run NAME CMD...: log to $OUT/NAME.log, print the summary lines
  local name=$1
  shift
  echo "gpu-check: $name"
  if "$@" >"$out/$name.log" 2>&1; then :; else
    status=1
    echo "gpu-check: $name FAILED (see $name.log)"
  fi
  grep -E '^test result|panicked|FAILED|skipped' "$out/$name.log" | sort | uniq -c | head -20
}
run cim-cuda-unit "$here/cim-cuda-unit" --nocapture
# The emulated suite is for machines without a GPU; here the real one runs.
run conformance-cuda "$here/conformance-cuda" --skip emulated --nocapture
exit $status
