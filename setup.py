"""Build the Cython extension unless FASTMETRICS_NO_EXTENSIONS is set.

Developer switches (kept out of the default build, as uvloop does):
  FASTMETRICS_CYTHON_ANNOTATE=1  write the HTML annotation next to the .pyx
  FASTMETRICS_DEBUG_BUILD=1      -O0 -g, Cython line tracing off, asserts on
  FASTMETRICS_SANITIZE=address,undefined
                                 -fsanitize=<list> -fno-omit-frame-pointer -g -O1
                                 at compile and link time (with `undefined`, also
                                 -fno-sanitize-recover=undefined -fno-wrapv);
                                 GCC/Clang only.  CPython is not instrumented: run
                                 it with LD_PRELOAD=$(gcc -print-file-name=libasan.so)
                                 as .ci/sanitizers.sh does.
Build flags are recorded in build/fastmetrics-flags.txt, a dependency of the
extension: switching them rebuilds it instead of reusing a stale build/ copy.
A compiler failure falls back to the pure-Python twin with a warning, unless
FASTMETRICS_REQUIRE_EXTENSIONS=1 (CI sets it where the extension must build).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sanitize_args():
    """Compile/link flags for FASTMETRICS_SANITIZE (a -fsanitize= list), or []."""
    value = os.environ.get("FASTMETRICS_SANITIZE", "").strip().replace(" ", "")
    if not value:
        return []
    if sys.platform == "win32":
        sys.exit("FASTMETRICS_SANITIZE is for GCC/Clang builds (not MSVC)")
    names = value.split(",")
    if not all(name and name.replace("-", "").isalnum() for name in names):
        sys.exit(f"FASTMETRICS_SANITIZE={value!r}: expected a comma list such as address,undefined")
    args = [f"-fsanitize={value}", "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in names:
        # -fno-wrapv: CPython's CFLAGS bring -fwrapv, which defines signed
        # overflow and so hides it from UBSan.
        args += ["-fno-sanitize-recover=undefined", "-fno-wrapv"]
    return args


def _flags_stamp(flags):
    """Write the build flags to build/fastmetrics-flags.txt when they changed and
    return its path: as a dependency of the extension it makes build_ext rebuild
    after a switch changes (pip builds in-tree and would otherwise keep a stale,
    say sanitized, build/lib copy that is newer than the sources)."""
    path = os.path.join("build", "fastmetrics-flags.txt")
    text = "\n".join(flags) + "\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    os.makedirs("build", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers...
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc):
        if _flag("FASTMETRICS_REQUIRE_EXTENSIONS"):
            raise exc
        sys.stderr.write(
            f"WARNING: fastmetrics C extension not built ({exc}); "
            "the pure-Python implementation will be used.\n"
        )


ext_modules = []
if not _flag("FASTMETRICS_NO_EXTENSIONS"):
    from Cython.Build import cythonize

    debug = _flag("FASTMETRICS_DEBUG_BUILD")
    if sys.platform == "win32":
        compile_args = ["/Od", "/Zi"] if debug else ["/O2"]
    else:
        compile_args = ["-O0", "-g3", "-UNDEBUG"] if debug else ["-O3"]
    link_args = _sanitize_args()
    if link_args:   # after the -O above: the sanitizer's -O1 wins (-O0 if debug)
        compile_args += [a for a in link_args if not (debug and a == "-O1")]
    headers = [f"src/fastmetrics/{h}" for h in ("_atomics.h", "_shards.h", "_arena.h", "_pydict.h")]
    stamp = _flags_stamp(compile_args + ["link:"] + link_args)
    ext_modules = cythonize(
        [
            Extension(
                f"fastmetrics.{name}",
                [f"src/fastmetrics/{name}.pyx"],
                include_dirs=["src/fastmetrics"],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
                depends=[stamp, *headers],
            )
            # the shard store and hot path; name -> metric dispatch over it
            for name in ("_core_c", "_dispatch_c")
        ],
        include_path=["src"],   # `from fastmetrics._core_c cimport ...`
        annotate=_flag("FASTMETRICS_CYTHON_ANNOTATE"),
        compiler_directives={"language_level": "3", "freethreading_compatible": True},
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
