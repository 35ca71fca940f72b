"""The implementation switch: FASTMETRICS_NO_EXTENSIONS at import time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import fastmetrics; "
         "print(fastmetrics.implementation, fastmetrics.__version__, fastmetrics.Counter.__mro__[1].__module__)")


def _probe(value):
    env = {k: v for k, v in os.environ.items() if k != "FASTMETRICS_NO_EXTENSIONS"}
    if value is not None:
        env["FASTMETRICS_NO_EXTENSIONS"] = value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_switch_on_selects_the_python_twin(value):
    impl, version, core = _probe(value)
    assert (impl, core) == ("python", "fastmetrics._core_py")
    assert version.count(".") >= 2


@pytest.mark.c_extension
@pytest.mark.parametrize("value", [None, "", "0", "false", "no"])
def test_switch_off_selects_the_extension(value):
    impl, _, core = _probe(value)
    assert (impl, core) == ("cython", "fastmetrics._core_c")


def test_public_api():
    import fastmetrics

    assert set(fastmetrics.__all__) <= set(dir(fastmetrics))
    assert {"Counter", "Enum", "implementation", "__version__"} <= set(fastmetrics.__all__)
    assert os.path.exists(os.path.join(os.path.dirname(fastmetrics.__file__), "py.typed"))


# -- a missing extension: a RuntimeWarning at import, unless opted out ------------------

# Installed by -c code before fastmetrics is imported: the extension cannot be
# imported, as after an install whose compile was skipped or whose .so is gone.
BLOCK_EXTENSION = """
import sys

class _NoExtension:
    def find_spec(self, name, path=None, target=None):
        if name in ("fastmetrics._core_c", "fastmetrics._dispatch_c"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoExtension())
"""

IMPORT_AND_REPORT = """
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastmetrics._core
    import fastmetrics
    import fastmetrics.metrics, fastmetrics.opencti   # every importer of _core: still one warning
print(fastmetrics.implementation)
for w in caught:
    print(f"{w.category.__name__}: {w.message}")
"""


def _import_without_extension(env_value=None, prelude=""):
    env = {k: v for k, v in os.environ.items() if k != "FASTMETRICS_NO_EXTENSIONS"}
    if env_value is not None:
        env["FASTMETRICS_NO_EXTENSIONS"] = env_value
    code = BLOCK_EXTENSION + prelude + IMPORT_AND_REPORT
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    implementation, *warnings = out.stdout.splitlines()
    return implementation, warnings


def test_missing_extension_warns_once_at_import():
    implementation, warnings = _import_without_extension()
    assert implementation == "python"
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert message.startswith("RuntimeWarning: fastmetrics: the C extension is not available"), message
    assert "blocked by the test" in message  # the import error is named
    assert "pure-Python core" in message and "slower" in message, message
    assert "FASTMETRICS_NO_EXTENSIONS=1" in message, message  # how to opt out
    assert "pip install --force-reinstall --no-cache-dir prometheus-fastmetrics" in message, message  # how to fix


@pytest.mark.parametrize("value", ["1", "true"])
def test_no_warning_with_the_opt_out(value):
    implementation, warnings = _import_without_extension(value)
    assert (implementation, warnings) == ("python", [])


def test_no_warning_on_other_interpreters():
    # PyPy/GraalPy never build the extension (setup.py): the twin is expected there.
    prelude = "import platform; platform.python_implementation = lambda: 'PyPy'\n"
    implementation, warnings = _import_without_extension(prelude=prelude)
    assert (implementation, warnings) == ("python", [])
