"""Build the Cython extension unless FASTMETRICS_NO_EXTENSIONS is set.

Developer switches (kept out of the default build, as uvloop does):
  FASTMETRICS_CYTHON_ANNOTATE=1  write the HTML annotation next to the .pyx
  FASTMETRICS_DEBUG_BUILD=1      -O0 -g, Cython line tracing off, asserts on
A compiler failure falls back to the pure-Python twin with a warning, unless
FASTMETRICS_REQUIRE_EXTENSIONS=1 (CI sets it where the extension must build).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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
    ext_modules = cythonize(
        [
            Extension(
                "fastmetrics._core_c",
                ["src/fastmetrics/_core_c.pyx"],
                include_dirs=["src/fastmetrics"],
                extra_compile_args=compile_args,
            )
        ],
        annotate=_flag("FASTMETRICS_CYTHON_ANNOTATE"),
        compiler_directives={"language_level": "3", "freethreading_compatible": True},
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
