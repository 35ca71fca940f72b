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

On CPython a failed compile fails the build (an error naming the opt-out,
FASTMETRICS_NO_EXTENSIONS=1, for a deliberate pure-Python install): without
the extension fastmetrics is no faster than prometheus_client, and a silent
fallback would hide that.  Other interpreters (PyPy, GraalPy) build nothing
and use the pure-Python twin, as multidict does.

The .pyx sources are cythonized by build_ext, not when setup.py is loaded, so
an sdist holds the .pyx/.pxd/.h sources and never generated C.
"""
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError


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


OPT_OUT = "FASTMETRICS_NO_EXTENSIONS"
EXTENSIONS = ("_core_c", "_dispatch_c")  # the shard store and hot path; name -> metric dispatch over it
HEADERS = [f"src/fastmetrics/{h}" for h in ("_atomics.h", "_shards.h", "_arena.h", "_promfile.h", "_pydict.h", "_fastcall.h")]


class ExtensionBuildError(BaseError):
    """The C extension did not build on CPython (setuptools prints it as ``error: ...``)."""


def _failure_message(what, exc):
    return (
        f"fastmetrics: building {what} failed: {exc}\n"
        "Without its C extension fastmetrics runs a pure-Python core that is no faster "
        "than prometheus_client, so this build stops here.  Either\n"
        "  - install a C compiler and the Python headers (Debian/Ubuntu: apt-get install gcc python3-dev; "
        "Alpine: apk add build-base python3-dev; Windows: the MSVC build tools) and retry,\n"
        "  - install a binary wheel (pip install --only-binary=prometheus-fastmetrics prometheus-fastmetrics), or\n"
        f"  - for a deliberate pure-Python install, set {OPT_OUT}=1 (e.g. {OPT_OUT}=1 pip install prometheus-fastmetrics)."
    )


class BuildExt(build_ext):
    """Cythonizes at build time, records the flags, and turns any failure into
    :class:`ExtensionBuildError` naming the opt-out."""

    def run(self):
        for ext in self.extensions:
            ext.depends = [*ext.depends, _flags_stamp(ext.extra_compile_args + ["link:"] + ext.extra_link_args)]
        try:
            super().run()
        except ExtensionBuildError:
            raise
        except Exception as exc:  # no compiler (DistutilsPlatformError), missing headers...
            raise ExtensionBuildError(_failure_message("the C extensions", exc)) from exc

    def build_extension(self, ext):
        try:
            if any(source.endswith(".pyx") for source in ext.sources):
                from Cython.Build import cythonize

                ext.sources = cythonize(
                    [ext],
                    include_path=["src"],  # `from fastmetrics._core_c cimport ...`
                    annotate=_flag("FASTMETRICS_CYTHON_ANNOTATE"),
                    compiler_directives={"language_level": "3", "freethreading_compatible": True},
                    force=self.force,
                    quiet=not self.verbose,
                )[0].sources
            super().build_extension(ext)
        except Exception as exc:
            raise ExtensionBuildError(_failure_message(f"the C extension {ext.name}", exc)) from exc


def _extensions():
    """The extensions to build here: none with the opt-out or off CPython."""
    if _flag(OPT_OUT):
        return []
    implementation = platform.python_implementation()
    if implementation != "CPython":
        sys.stderr.write(f"fastmetrics: {implementation} uses the pure-Python core; no C extension is built.\n")
        return []
    debug = _flag("FASTMETRICS_DEBUG_BUILD")
    if sys.platform == "win32":
        compile_args = ["/Od", "/Zi"] if debug else ["/O2"]
    else:
        compile_args = ["-O0", "-g3", "-UNDEBUG"] if debug else ["-O3"]
    link_args = _sanitize_args()
    if link_args:   # after the -O above: the sanitizer's -O1 wins (-O0 if debug)
        compile_args += [a for a in link_args if not (debug and a == "-O1")]
    return [
        Extension(
            f"fastmetrics.{name}",
            [f"src/fastmetrics/{name}.pyx"],
            include_dirs=["src/fastmetrics"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            depends=list(HEADERS),
        )
        for name in EXTENSIONS
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
