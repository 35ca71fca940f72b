"""prometheus_client compatibility of Counter and Enum: names, errors, labels,
children, reset, exemplars and byte-identical exposition."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction

import prometheus_client as pc
import pytest
from prometheus_client import CollectorRegistry

from _parity import PC_HAS_REMOVE_BY_LABELS, expositions, outcome

NEGATIVE = "Counters can only be incremented by non-negative amounts."


def both(impl, build):
    """Build the same metrics in prometheus_client and in ``impl``; returns the
    two registries and the two metric objects (each in its own registry)."""
    ref_reg, our_reg = CollectorRegistry(), CollectorRegistry()
    ref = build(pc, ref_reg)
    ours = build(impl, our_reg)
    return ref_reg, our_reg, ref, ours


# -- construction and naming -----------------------------------------------------

@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="jobs_total", documentation="Jobs."),
        dict(name="jobs", documentation="Jobs.", namespace="app", subsystem="worker"),
        dict(name="read", documentation="Bytes read.", unit="bytes"),
        dict(name="read_bytes_total", documentation="Bytes read.", unit="bytes"),
        dict(name="x_total_total", documentation="Doubled suffix."),
        dict(name="req", documentation='Quotes " and \\ backslash\nnewline.', labelnames=["path", "code"]),
    ],
)
def test_counter_exposition_is_byte_identical(impl, kwargs):
    def build(mod, registry):
        c = mod.Counter(registry=registry, **kwargs)
        if kwargs.get("labelnames"):
            c.labels("/a", "200").inc(3)
            c.labels(path="/b\n\"x\"", code=500).inc(0.5)
            c.labels("/a", "200").inc(True)
        else:
            c.inc()
            c.inc(2.25)
            c.inc(10**6)
        return c

    ref_reg, our_reg, _, _ = both(impl, build)
    assert expositions(our_reg) == expositions(ref_reg)


@pytest.mark.parametrize("labelnames", [(), ("shard",)])
def test_enum_exposition_is_byte_identical_in_declaration_order(impl, labelnames):
    states = ["stopped", "idle", "running"]  # not alphabetical on purpose

    def build(mod, registry):
        e = mod.Enum("conn_state", "State.", labelnames=labelnames, namespace="opencti", states=states,
                     registry=registry)
        if labelnames:
            e.labels("a").state("running")
            e.labels("b")
        else:
            e.state("running")
        return e

    ref_reg, our_reg, _, _ = both(impl, build)
    ours = expositions(our_reg)
    assert ours == expositions(ref_reg)
    text = ours[0]
    assert text.index('"stopped"') < text.index('"idle"') < text.index('"running"')


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("",), {}),
        (("bad name",), {}),
        (("x", "d"), {"labelnames": ["__reserved"]}),
        (("x", "d"), {"labelnames": ["ok", "bad-label"]}),
        (("x", "d"), {"unit": "seconds", "labelnames": [1]}),
    ],
)
def test_invalid_names_raise_like_prometheus_client(impl, args, kwargs):
    args = (*args, "doc") if len(args) == 1 else args
    ref = outcome(lambda: pc.Counter(*args, registry=None, **kwargs))
    ours = outcome(lambda: impl.Counter(*args, registry=None, **kwargs))
    assert ours == ref


def test_enum_construction_errors_match(impl):
    for kwargs in (dict(states=[]), dict(states=None), dict(states=["a"], labelnames=["e"])):
        ref = outcome(lambda kwargs=kwargs: pc.Enum("e", "d", registry=None, **kwargs))
        ours = outcome(lambda kwargs=kwargs: impl.Enum("e", "d", registry=None, **kwargs))
        assert ours == ref and ours[0] == "ValueError"
    with pytest.raises(ValueError):
        impl.Enum("e", "d", states=["a"], unit="seconds", registry=None)


def test_duplicate_registration_raises_prometheus_error(impl, registry):
    impl.Counter("dup_total", "d", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries in CollectorRegistry"):
        impl.Counter("dup", "d", registry=registry)
    pc.Counter("other", "d", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        impl.Counter("other", "d", registry=registry)


def test_registers_in_default_registry_and_unregisters(impl):
    c = impl.Counter("fastmetrics_default_registry_probe_total", "d")
    try:
        c.inc(7)
        assert pc.REGISTRY.get_sample_value("fastmetrics_default_registry_probe_total") == 7.0
    finally:
        pc.REGISTRY.unregister(c)
    assert pc.REGISTRY.get_sample_value("fastmetrics_default_registry_probe_total") is None


def test_str_repr_describe(impl, counter):
    c = counter("thing_total", "Things.")
    assert str(c) == "counter:thing"
    assert repr(c) == "fastmetrics.metrics.Counter(thing)"
    (family,) = c.describe()
    assert (family.name, family.type, family.documentation, family.samples) == ("thing", "counter", "Things.", [])


# -- increments --------------------------------------------------------------------

@pytest.mark.parametrize("amount", [-1, -0.5, float("nan"), -math.inf, -(2**70)])
def test_negative_and_nan_increments_are_rejected_without_changing_the_total(counter, amount):
    c = counter()
    c.inc(5)
    with pytest.raises(ValueError) as err:
        c.inc(amount)
    assert str(err.value) == NEGATIVE
    assert c._value.get() == 5.0


@pytest.mark.parametrize("amount", ["1", None, [1], 1j, b"1", object(), Decimal("1.5")])
def test_non_numbers_raise_type_error_like_prometheus_client(counter, amount):
    c = counter()
    ref = outcome(lambda: pc.Counter("r", "d", registry=None).inc(amount))
    ours = outcome(lambda: c.inc(amount))
    assert ours[0] == ref[0] == "TypeError"
    assert ours == ref
    assert c._value.get() == 0.0


@pytest.mark.parametrize(
    "amount, expected",
    [(True, 1.0), (False, 0.0), (0, 0.0), (2.5, 2.5), (Fraction(1, 4), 0.25),
     (math.inf, math.inf)],
)
def test_numeric_types(counter, amount, expected):
    c = counter()
    c.inc(amount)
    assert c._value.get() == expected


def test_huge_int_overflows_like_prometheus_client(counter):
    c = counter()
    ref = outcome(lambda: pc.Counter("r", "d", registry=None).inc(10**400))
    assert outcome(lambda: c.inc(10**400)) == ref == ("OverflowError", ref[1])
    assert c._value.get() == 0.0


def test_integer_totals_exact_up_to_2_53(counter):
    c = counter()
    c.inc(2**53 - 10)
    for _ in range(10):
        c.inc(1)
    assert c._value.get() == float(2**53)
    assert int(c._value.get()) == 2**53


def test_float_sums_match_prometheus_client_exactly(counter):
    c = counter()
    ref = pc.Counter("r", "d", registry=None)
    for amount in (0.1, 0.2, 0.3, 1e-9, 123.456, 1e15, 0.7):
        c.inc(amount)
        ref.inc(amount)
        assert c._value.get() == ref._value.get()


def test_labelled_parent_cannot_be_incremented(impl, counter):
    c = counter("p", "d", labelnames=["a"])
    ref = outcome(lambda: pc.Counter("p", "d", ["a"], registry=None).inc())
    assert outcome(lambda: c.inc()) == ref == ("ValueError", "counter metric is missing label values")
    e = impl.Enum("e", "d", ["a"], states=["x"], registry=None)
    ref = outcome(lambda: pc.Enum("e", "d", ["a"], states=["x"], registry=None).state("x"))
    assert outcome(lambda: e.state("x")) == ref


# -- labels ----------------------------------------------------------------------------

def test_labels_returns_the_same_child_for_equal_values(counter):
    c = counter("req", "d", labelnames=["method", "code"])
    a = c.labels("get", "200")
    assert c.labels("get", "200") is a
    assert c.labels(method="get", code="200") is a
    assert c.labels("get", 200) is a          # str() of values, as upstream
    assert c.labels(code=200, method="get") is a
    one = counter("one", "d", labelnames=["k"])
    assert one.labels("x") is one.labels(k="x") is one.labels("x")
    assert one.labels(1) is one.labels("1")
    assert one.labels(True) is one.labels("True") is not one.labels(1)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.labels(),
        lambda m: m.labels("a"),
        lambda m: m.labels("a", "b", "c"),
        lambda m: m.labels("a", b="b"),
        lambda m: m.labels(a="a", c="c"),
        lambda m: m.labels(a="a"),
        lambda m: m.labels("a", "b").labels("a", "b"),
        lambda m: m.remove("a"),
    ],
)
def test_label_errors_match_prometheus_client(impl, call):
    ref = outcome(lambda: call(pc.Counter("m", "d", ["a", "b"], registry=None)))
    ours = outcome(lambda: call(impl.Counter("m", "d", ["a", "b"], registry=None)))
    assert ours == ref and ours[0] == "ValueError"


def test_labels_on_unlabelled_metric_errors_match(impl):
    ref = outcome(lambda: pc.Counter("m", "d", registry=None).labels("x"))
    assert outcome(lambda: impl.Counter("m", "d", registry=None).labels("x")) == ref
    ref = outcome(lambda: pc.Counter("m", "d", registry=None).remove("x"))
    assert outcome(lambda: impl.Counter("m", "d", registry=None).remove("x")) == ref


def test_remove_clear_and_remove_by_labels(impl):
    def build(mod, registry):
        c = mod.Counter("jobs", "d", ["queue", "kind"], registry=registry)
        for q in ("a", "b", "c"):
            for k in ("x", "y"):
                c.labels(q, k).inc()
        c.remove("a", "x")
        return c

    ref_reg, our_reg, ref, ours = both(impl, build)
    # An absent labelset: ignored by prometheus_client 0.22+, KeyError before.
    assert outcome(lambda: ours.remove("zzz", "x")) == outcome(lambda: ref.remove("zzz", "x"))
    ours.remove_by_labels({"kind": "y", "queue": "b"})
    ours.remove_by_labels({})
    if PC_HAS_REMOVE_BY_LABELS:
        ref.remove_by_labels({"kind": "y", "queue": "b"})
        ref.remove_by_labels({})
    else:  # prometheus_client < 0.24: the same removal by hand
        ref.remove("b", "y")
    assert expositions(our_reg) == expositions(ref_reg)
    for call in (lambda m: m.remove_by_labels({"nope": "1"}), lambda m: m.remove_by_labels([("kind", "x")])):
        if PC_HAS_REMOVE_BY_LABELS:
            assert outcome(lambda call=call: call(ours)) == outcome(lambda call=call: call(ref))
        else:
            assert outcome(lambda call=call: call(ours))[0] in ("ValueError", "TypeError")
    ours.clear()
    ref.clear()
    assert expositions(our_reg) == expositions(ref_reg)
    assert dict(ours._metrics) == {}
    # clear() on an unlabelled metric is a no-op, as upstream
    impl.Counter("solo", "d", registry=None).clear()


def test_removed_child_keeps_counting_but_is_not_exported(counter, registry):
    c = counter("jobs", "d", labelnames=["q"])
    child = c.labels("a")
    child.inc(2)
    c.remove("a")
    child.inc(3)                       # a held reference still works
    assert child._value.get() == 5.0
    assert registry.get_sample_value("jobs_total", {"q": "a"}) is None
    fresh = c.labels("a")              # a new child starts from zero
    assert fresh is not child and fresh._value.get() == 0.0


def test_recycled_slots_start_at_zero(impl, counter):
    import gc

    c = counter("churn", "d", labelnames=["k"])
    for _round in range(3):
        for i in range(50):
            c.labels(str(i)).inc(i + 1)
        for i in range(50):
            assert c.labels(str(i))._value.get() == i + 1
        c.clear()
        gc.collect()
    assert impl.stats()["slots_free"] >= 50


# -- reset, created, exemplars, count_exceptions ------------------------------------------

def test_reset_restarts_from_zero_like_prometheus_client(counter):
    c = counter()
    ref = pc.Counter("r", "d", registry=None)
    for m in (c, ref):
        m.inc(0.1)
        m.inc(0.2)
    created = c._created
    c.reset()
    ref.reset()
    assert c._value.get() == 0.0
    assert c._created >= created
    for m in (c, ref):
        m.inc(0.1)
    assert c._value.get() == ref._value.get() == 0.1


def test_created_series_follow_prometheus_switch(impl, registry):
    c = impl.Counter("ev", "d", registry=registry)
    c.inc()
    assert registry.get_sample_value("ev_created") == c._created
    impl_module_switch = pc.disable_created_metrics
    try:
        impl_module_switch()
        assert registry.get_sample_value("ev_created") is None
        assert registry.get_sample_value("ev_total") == 1.0
    finally:
        pc.enable_created_metrics()
    assert registry.get_sample_value("ev_created") is not None


def test_created_env_var_is_honoured():
    code = (
        "import prometheus_client as pc, fastmetrics as fm\n"
        "r = pc.CollectorRegistry(); c = fm.Counter('ev', 'd', registry=r); c.inc()\n"
        "print(pc.generate_latest(r).decode())\n"
    )
    env = dict(os.environ, PROMETHEUS_DISABLE_CREATED_SERIES="true")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ev_total 1.0" in out.stdout and "_created" not in out.stdout


def test_exemplars_match_prometheus_client(impl):
    def build(mod, registry):
        c = mod.Counter("req", "d", ["path"], registry=registry)
        c.labels("/").inc(2, exemplar={"trace_id": "abc"})
        c.labels("/").inc(1)
        return c

    ref_reg, our_reg, ref, ours = both(impl, build)
    assert expositions(our_reg) == expositions(ref_reg)
    assert "trace_id" in expositions(our_reg)[1]
    bad = {"x" * 100: "y" * 100}
    assert outcome(lambda: ours.labels("/").inc(1, exemplar=bad)) == outcome(
        lambda: ref.labels("/").inc(1, exemplar=bad))
    # upstream counts the increment before validating the exemplar; so do we
    assert ours.labels("/")._value.get() == ref.labels("/")._value.get() == 4.0


def test_count_exceptions(counter):
    c = counter()

    @c.count_exceptions(KeyError)
    def boom(exc):
        raise exc

    for exc in (KeyError("k"), ValueError("v"), KeyError("k")):
        with pytest.raises(type(exc)):
            boom(exc)
    with pytest.raises(RuntimeError), c.count_exceptions():
        raise RuntimeError
    assert c._value.get() == 3.0


# -- enum ------------------------------------------------------------------------------------

def test_enum_state_and_errors(impl, registry):
    e = impl.Enum("st", "d", states=["idle", "running", "stopped"], registry=registry)
    assert e._value == 0
    e.state("running")
    assert e._value == 1
    assert registry.get_sample_value("st", {"st": "running"}) == 1.0
    ref = pc.Enum("st", "d", states=["idle", "running", "stopped"], registry=None)
    for bogus in ("bogus", None, ["idle"], 1):
        assert outcome(lambda bogus=bogus: e.state(bogus)) == outcome(lambda bogus=bogus: ref.state(bogus))
        assert outcome(lambda bogus=bogus: e.state(bogus))[0] == "ValueError"
    assert e._value == 1


def test_enum_duplicate_states_use_first_index_like_list_index(impl):
    e = impl.Enum("dupst", "d", states=["a", "b", "a"], registry=None)
    ref = pc.Enum("dupst", "d", states=["a", "b", "a"], registry=None)
    for s in ("b", "a"):
        e.state(s)
        ref.state(s)
        assert e._value == ref._value
