#!/usr/bin/env bash
# Build tests/c/tsan_shards.c (which includes src/fastmetrics/_shards.h) and
# tests/c/tsan_promfile.c (src/fastmetrics/_promfile.h, the
# prometheus_client-compatible store; both with tests/c/harness.h) twice each
# and run them: under ThreadSanitizer (-fsanitize=thread -O1 -g; any report halts
# it with a non-zero exit; -Wno-tsan: the writer fence it warns about runs only
# where membarrier is unavailable) and plainly at -O2 (a correctness run, at a
# larger scale since it is ~10x faster).  Exits non-zero on any failure.
#
#   bash tests/c/run_tsan.sh            # both builds
#   CC=clang bash tests/c/run_tsan.sh   # another compiler
#   TSAN_SCALE=5 PLAIN_SCALE=50 bash tests/c/run_tsan.sh   # longer runs
set -euo pipefail
cd "$(dirname "$0")/../.."

CC=${CC:-gcc}
TSAN_SCALE=${TSAN_SCALE:-3}
PLAIN_SCALE=${PLAIN_SCALE:-10}
TIMEOUT=${TSAN_TIMEOUT:-300}   # seconds per run: a deadlock fails, never hangs CI
CFLAGS_COMMON=(-std=gnu11 -g -Wall -Wextra -Wno-unused-function -pthread -Isrc/fastmetrics)
out=$(mktemp -d "${TMPDIR:-/tmp}/fm-tsan.XXXXXX")
trap 'rm -rf "$out"' EXIT

# Kernels with 32 bits of mmap ASLR entropy (Ubuntu 24.04 and others) break
# older TSan runtimes ("unexpected memory mapping"): run without ASLR where the
# personality switch is allowed (some container seccomp profiles refuse it).
norandom=()
if command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then
  norandom=(setarch "$(uname -m)" -R)
fi

for harness in tsan_shards tsan_promfile; do
  echo "== $harness: ThreadSanitizer build ($CC -fsanitize=thread -O1, scale $TSAN_SCALE)"
  "$CC" "${CFLAGS_COMMON[@]}" -O1 -fsanitize=thread -Wno-tsan "tests/c/$harness.c" -o "$out/${harness}_tsan"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    timeout "$TIMEOUT" "${norandom[@]}" "$out/${harness}_tsan" "$TSAN_SCALE"

  echo "== $harness: plain build ($CC -O2, scale $PLAIN_SCALE)"
  "$CC" "${CFLAGS_COMMON[@]}" -O2 "tests/c/$harness.c" -o "$out/${harness}_plain"
  timeout "$TIMEOUT" "$out/${harness}_plain" "$PLAIN_SCALE"
done
