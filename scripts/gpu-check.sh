#!/usr/bin/env bash
# Build here, run on the GPU machine: the CUDA conformance suite, the CUDA models
# against the CPU, and the cim-cuda unit tests (NVRTC compiles every kernel source).
#
#   scripts/gpu-check.sh           build the release test binaries and pack them, with
#                                  the runner and ../shared/device/gpu-env.sh, into
#                                  gpu-check/ (git-ignored, see .gitignore)
#   bash gpu-check/run.sh          on the GPU machine (e.g. the device tool's `run`
#                                  with carry ["gpu-check"]): logs go to $OUT
#                                  (default gpu-check/logs)
#
# Without a GPU the runner stops after `cim-cuda info` with exit status 2 and says why.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
pack=gpu-check
env_script=../shared/device/gpu-env.sh

echo "gpu-check: building release test binaries (cim-conformance --test cuda, cim-cuda)"
json=$(cargo test --release --no-run -p cim-conformance --test cuda --message-format=json
  cargo test --release --no-run -p cim-cuda --lib --message-format=json)
cargo build --release -p cim-cuda --bin cim-cuda

# The test executables: "executable":"<path>" of each test artifact.
mapfile -t exes < <(printf '%s\n' "$json" | grep -o '"executable":"[^"]*"' | sed 's/"executable":"//; s/"$//' \
  | grep -E '/deps/(cuda|cim_cuda)-[0-9a-f]+$' | sort -u)
if [ "${#exes[@]}" -eq 0 ]; then
  echo "gpu-check: no test executables found in cargo's output" >&2
  exit 1
fi

rm -rf "$pack"
mkdir -p "$pack"
for e in "${exes[@]}"; do
  case "$(basename "$e")" in
    cuda-*) cp "$e" "$pack/conformance-cuda" ;;
    cim_cuda-*) cp "$e" "$pack/cim-cuda-unit" ;;
  esac
done
cp target/release/cim-cuda "$pack/cim-cuda"
# Debug line tables are not needed there, and the device tool carries at most 64 MiB.
if command -v strip >/dev/null; then strip --strip-debug "$pack"/conformance-cuda "$pack"/cim-cuda-unit "$pack"/cim-cuda 2>/dev/null || true; fi
if [ -f "$env_script" ]; then
  cp "$env_script" "$pack/gpu-env.sh"
else
  echo "gpu-check: $env_script not found; the runner will use the system's library path" >&2
fi
cp scripts/gpu-check-run.sh "$pack/run.sh"
git rev-parse HEAD >"$pack/commit" 2>/dev/null || true
du -sh "$pack"
echo "gpu-check: packed into $pack/; on the GPU machine run: bash $pack/run.sh"
