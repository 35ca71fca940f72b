#!/usr/bin/env bash
# Sanitizer checks (run by .ci/run and the `sanitizers` job of ci.yml):
#
#   asan  the extension built with FASTMETRICS_SANITIZE=address,undefined in its
#         own venv (.venv-asan), then the test suite (-m "not e2e") with the
#         ASan runtime preloaded into CPython (which is not instrumented) and
#         PYTHONMALLOC=malloc, so Python objects are ASan heap blocks too.
#         Any ASan/UBSan report, in pytest or in a subprocess it starts,
#         fails the step: reports go to files that are printed at the end.
#         The tests that fork() while other threads run skip here: GCC 12's
#         libasan allocator is not fork-safe (tests/_support.py fork_with_threads).
#   tsan  tests/c/run_tsan.sh: the shard store (and the prometheus_client-compatible
#         store, _promfile.h) driven from many threads in C,
#         under ThreadSanitizer, then a plain -O2 build of the same harness.
#
#   bash .ci/sanitizers.sh            # both
#   bash .ci/sanitizers.sh asan       # one of them
#
# Needs gcc (or CC) with its sanitizer runtimes; on Debian/Ubuntu they are
# installed with apt-get if missing (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
VENV=${FASTMETRICS_ASAN_VENV:-.venv-asan}
SANITIZE=address,undefined

die() { echo "sanitizers.sh: $*" >&2; exit 1; }

# The runtime library `name` as the compiler finds it, if it really exists
# (gcc -print-file-name echoes the bare name back when it has no such file).
runtime() {
  local f
  f=$("$CC" -print-file-name="$1")
  [[ $f == /* && -e $(readlink -f "$f") ]] && echo "$f"
}

ensure_runtimes() {
  local lib missing=()
  for lib in libasan.so libubsan.so libtsan.so; do
    runtime "$lib" >/dev/null || missing+=("$lib")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  echo "== sanitizer runtimes missing (${missing[*]}): installing with apt-get"
  command -v apt-get >/dev/null || die "no ${missing[*]} for $CC, and no apt-get to install them"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    gcc libasan8 libubsan1 libtsan2 </dev/null
  for lib in "${missing[@]}"; do
    runtime "$lib" >/dev/null || die "$lib still missing for $CC after apt-get install"
  done
}

run_asan() {
  local start=$SECONDS libasan logdir rc so syms
  libasan=$(runtime libasan.so)
  echo "== ASan+UBSan: build (FASTMETRICS_SANITIZE=$SANITIZE) in $VENV"
  if [[ -x $VENV/bin/python ]]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    FASTMETRICS_SANITIZE=$SANITIZE "$VENV/bin/python" -m pip install -q ".[test]"
    # A reused venv must not keep a stale (say, unsanitized) extension.
    FASTMETRICS_SANITIZE=$SANITIZE \
      "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps .
  else
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    FASTMETRICS_SANITIZE=$SANITIZE "$VENV/bin/python" -m pip install -q ".[test]"
  fi

  # Reports go to files (one per process, pytest's subprocesses included), so
  # none can hide in a subprocess whose exit status a test expects to be bad.
  logdir=$(mktemp -d "${TMPDIR:-/tmp}/fm-asan.XXXXXX")
  # detect_leaks=0: CPython does not free everything at exit.
  # quarantine_size_mb=16 (default 256): freed blocks stay poisoned for 16 MiB
  # of frees; the default makes RSS grow ~5 MiB per 1,000 short-lived threads
  # until it is full, which fails the thread-churn test's 32 MiB growth bound.
  # UBSan: GCC's libubsan writes its reports to stderr whatever its log_path
  # (its own report path setter is interposed by the preloaded libasan's, which
  # is why both get the same log_path); so it aborts, and ASan's handle_abort
  # turns the SIGABRT into a report in $logdir whose stack names the check
  # (__ubsan_handle_<check>) and where it failed.
  local asan_options="detect_leaks=0:abort_on_error=1:handle_abort=1:quarantine_size_mb=16:log_path=$logdir/report"
  local ubsan_options="print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$logdir/report"
  sanitized() {
    LD_PRELOAD=$libasan ASAN_OPTIONS=$asan_options UBSAN_OPTIONS=$ubsan_options PYTHONMALLOC=malloc "$@"
  }
  report_and_die() {
    local f
    for f in "$logdir"/*; do
      echo "---- $f" >&2
      cat "$f" >&2
    done
    die "$*"
  }

  so=$(sanitized "$VENV/bin/python" -c 'import fastmetrics._core_c as m; print(m.__file__)')
  syms=$(nm -D --undefined-only "$so")   # (not piped into grep -q: pipefail + SIGPIPE)
  grep -q ' __asan_init' <<<"$syms" || die "$so is not built with AddressSanitizer"
  grep -q ' __ubsan_handle_' <<<"$syms" || die "$so is not built with UBSan"
  sanitized "$VENV/bin/python" -c 'import fastmetrics as f; assert f.implementation == "cython", f.implementation'

  # Canary: an out-of-bounds write on a malloc'ed block must abort the process
  # and leave a report, or this step could not catch anything.
  if sanitized "$VENV/bin/python" -c '
import ctypes
buf = ctypes.create_string_buffer(64)          # PYTHONMALLOC=malloc: an ASan heap block
ctypes.memset(ctypes.addressof(buf) + 64, 0, 8)' 2>/dev/null; then
    die "canary: an out-of-bounds write went unnoticed"
  fi
  grep -qs "heap-buffer-overflow" "$logdir"/report.* || die "canary: no ASan report in $logdir"
  rm -f "$logdir"/*
  echo "canary: a planted heap-buffer-overflow was reported and aborted python"

  echo "== ASan+UBSan: tests (-m 'not e2e'; LD_PRELOAD=$libasan)"
  # Left out: tests/test_opencti_differential.py runs fastmetrics inside pycti's
  # own venv (an unsanitized build), so nothing of it runs under the sanitizers.
  # tests/e2e: real servers, covered by the README test command.
  rc=0
  sanitized "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider -m "not e2e" \
    --ignore=tests/test_opencti_differential.py || rc=$?
  if compgen -G "$logdir/*" >/dev/null; then
    report_and_die "sanitizer report(s) above (pytest exit $rc)"
  fi
  [[ $rc -eq 0 ]] || die "tests failed under ASan+UBSan (exit $rc)"
  rm -rf "$logdir"
  echo "== ASan+UBSan: OK in $((SECONDS - start)) s"
}

run_tsan() {
  local start=$SECONDS
  CC=$CC bash tests/c/run_tsan.sh
  echo "== TSan harness: OK in $((SECONDS - start)) s"
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(asan tsan)
for step in "${steps[@]}"; do
  case $step in
    asan|tsan) ;;
    *) echo "usage: $0 [asan] [tsan]" >&2; exit 2 ;;
  esac
done
ensure_runtimes
for step in "${steps[@]}"; do
  "run_$step"
done
