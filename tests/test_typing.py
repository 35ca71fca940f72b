"""The public API as a type checker sees it: ``mypy --strict`` on user code.

The package ships ``py.typed``; type checkers see the pure-Python twin's
classes (``fastmetrics._core`` selects the implementation only at run time),
so both implementations have the same types and this test is not
parametrized.  Each snippet is only type-checked, never run.  The snippet with
mistakes marks each expected error with ``# E: [code]`` on its line, and the
errors mypy reports must be exactly those.

mypy is in the ``lint`` extra: without it the test skips, except under
``CI=true``, where it fails (CI installs it).
"""

from __future__ import annotations

import re
import sys
import textwrap
from types import ModuleType
from typing import Set, Tuple

import pytest
from _support import skip_or_fail

CORRECT = '''
    from typing import Dict, List

    import prometheus_client
    from prometheus_client import CollectorRegistry
    from typing_extensions import assert_type

    import fastmetrics
    from fastmetrics import Counter, Enum, OpenCTIMetricHandler
    from fastmetrics.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    requests = Counter("requests", "Requests served", ["path"], registry=registry)
    child = requests.labels("/")
    assert_type(child, Counter)
    child.inc()
    child.inc(2.5, exemplar={"trace_id": "abc"})
    assert_type(requests.labels(path="/x"), Counter)
    requests.labels("/x").inc(3)
    requests.remove("/x")
    requests.clear()

    plain = Counter("plain", "No labels", registry=registry)
    plain.inc(True)
    plain.reset()
    with plain.count_exceptions(ValueError):
        pass

    state = Enum("state", "Connector state", states=["idle", "running"], registry=registry)
    state.state("running")
    phase = Enum("phase", "Per worker", ["worker"], states=["a", "b"], registry=registry)
    assert_type(phase.labels("w1"), Enum)
    phase.labels("w1").state("b")

    handler = OpenCTIMetricHandler(None, activated=False, namespace="x", port=9095, addr="127.0.0.1")
    handler.inc("run_count")
    handler.inc("record_send", 10)
    handler.state("running")
    handler.state("idle", "state")

    def count(metric: prometheus_client.Counter) -> None:   # code typed against upstream
        metric.inc()

    count(plain)
    count(child)
    upstream_state: prometheus_client.Enum = state
    upstream_state.state("idle")

    MultiProcessCollector(CollectorRegistry())
    fastmetrics.disable_created_metrics()
    fastmetrics.enable_created_metrics()
    stats: Dict[str, int] = fastmetrics.shard_stats()
    names: List[str] = [fastmetrics.implementation, fastmetrics.__version__]
'''

MISTAKES = '''
    import fastmetrics

    c = fastmetrics.Counter("x", "y", ["k"])
    c.labels("a").incc()  # E: [attr-defined] "Counter" has no attribute "incc"
    c.labels("a").inc("1")  # E: [arg-type] incompatible type "str"; expected "float"
    c.state("a")  # E: [attr-defined] "Counter" has no attribute "state"
    e = fastmetrics.Enum("e", "d", states=["a", "b"])
    e.state(1)  # E: [arg-type] incompatible type "int"; expected "str"
    e.inc()  # E: [attr-defined] "Enum" has no attribute "inc"
    h = fastmetrics.OpenCTIMetricHandler(None)
    h.inc("run_count", "1")  # E: [arg-type] incompatible type "str"; expected "float"
    h.state(1)  # E: [arg-type] incompatible type "int"; expected "str"
'''

_ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<message>.*)  \[(?P<code>[a-z-]+)\]$")
_EXPECTED = re.compile(r"# E: \[(?P<code>[a-z-]+)\] (?P<message>.*)$")


def _mypy_api() -> ModuleType:
    try:
        from mypy import api
    except ImportError:
        if sys.version_info < (3, 10):
            pytest.skip("mypy 2 runs on Python 3.10+ (the test extra installs it there)")
        skip_or_fail("mypy is not installed (the test extra installs it)")
    return api


@pytest.fixture(scope="module")
def mypy_strict(tmp_path_factory: pytest.TempPathFactory):
    """Run ``mypy --strict`` on a snippet; the (stdout, exit status).  One
    cache for the module's runs; no config file of the checkout applies."""
    api = _mypy_api()
    work = tmp_path_factory.mktemp("typing")
    config = work / "mypy.ini"
    config.write_text("[mypy]\n")

    def run(name: str, source: str) -> Tuple[str, int]:
        path = work / name
        path.write_text(textwrap.dedent(source))
        stdout, stderr, status = api.run(["--strict", "--config-file", str(config),
                                          "--cache-dir", str(work / ".mypy_cache"), "--no-error-summary",
                                          "--show-error-codes", "--no-pretty", str(path)])
        assert status in (0, 1), f"mypy failed to run:\n{stdout}{stderr}"
        return stdout, status

    return run


def test_correct_usage_type_checks_clean_under_strict(mypy_strict) -> None:
    stdout, status = mypy_strict("correct_usage.py", CORRECT)
    assert stdout == "" and status == 0, stdout


def test_mistakes_are_type_errors(mypy_strict) -> None:
    """A typo'd method on a child (``labels()`` returns the metric's own type,
    not Any), a state that is not a str, an increment that is not a number:
    each flagged on its line, and nothing else."""
    source = textwrap.dedent(MISTAKES)
    expected: Set[Tuple[int, str]] = set()
    messages = {}
    for number, line in enumerate(source.splitlines(), start=1):
        match = _EXPECTED.search(line)
        if match:
            expected.add((number, match["code"]))
            messages[number] = match["message"]
    assert len(expected) == 7

    stdout, status = mypy_strict("mistakes.py", MISTAKES)
    reported: Set[Tuple[int, str]] = set()
    for line in stdout.splitlines():
        match = _ERROR.match(line)
        assert match, f"unexpected mypy output: {line}"
        number = int(match["line"])
        reported.add((number, match["code"]))
        assert messages.get(number, "") in match["message"], line
    assert status == 1
    assert reported == expected, stdout


def test_the_mistakes_fail_at_run_time_too() -> None:
    """The errors flagged above are real: the same calls raise (so the types
    are not stricter than the behaviour)."""
    import fastmetrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    c = fastmetrics.Counter("x", "y", ["k"], registry=registry)
    with pytest.raises(AttributeError):
        c.labels("a").incc()  # type: ignore[attr-defined]  # the mistake under test
    with pytest.raises(TypeError):
        c.labels("a").inc("1")  # type: ignore[arg-type]  # the mistake under test
    e = fastmetrics.Enum("e", "d", states=["a", "b"], registry=registry)
    with pytest.raises(ValueError):
        e.state(1)  # type: ignore[arg-type]  # the mistake under test
