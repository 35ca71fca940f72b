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
