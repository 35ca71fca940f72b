"""The public classes: what prometheus_client's users can observe of their
design (isinstance, copy, keyword labels, errors of a labelled parent), and
that CPython specialises the hot calls on them (issue 15).  Both
implementations."""

from __future__ import annotations

import copy
import ctypes
import dis
import gc
import io
import sys
import weakref
from typing import Any, Callable, List

import prometheus_client as pc
import pytest
from _parity import outcome

from fastmetrics.opencti import _HandlerAPI

# -- isinstance: the classes are prometheus_client's -----------------------------


def test_isinstance_of_prometheus_client_classes(impl, registry):
    c = impl.Counter("c", "d", registry=registry)
    child = impl.Counter("p", "d", ["k"], registry=registry).labels("x")
    e = impl.Enum("e", "d", states=["a", "b"], registry=registry)
    for metric in (c, child):
        assert isinstance(metric, pc.Counter)
        assert not isinstance(metric, pc.Enum)
    assert isinstance(e, pc.Enum) and not isinstance(e, pc.Counter)
    for metric in (c, child, e):
        assert isinstance(metric, pc.metrics.MetricWrapperBase)
    assert issubclass(impl.Counter, pc.Counter) and issubclass(impl.Enum, pc.Enum)


def test_hot_methods_are_ours_not_upstreams(impl):
    """prometheus_client's classes come last in the MRO: inc/state/labels
    resolve to the core's (upstream's would use a _value we do not have)."""
    for cls, names in ((impl.Counter, ("inc", "labels", "reset", "collect")), (impl.Enum, ("state", "labels"))):
        upstream = pc.Counter if cls is impl.Counter else pc.Enum
        for name in names:
            assert getattr(cls, name) is not getattr(upstream, name), name
        assert cls.__mro__.index(upstream) > cls.__mro__.index(impl.core.MetricCore)


class _Logger:
    def __init__(self) -> None:
        self.errors: List[Any] = []

    def info(self, message: str, meta: Any = None) -> None:
        pass

    def error(self, message: str, meta: Any = None) -> None:
        self.errors.append((message, meta))


def test_pycti_style_metric_exists_checks(impl, registry):
    """pycti's ``_metric_exists`` is ``isinstance(self._metrics[name], expected_type)``."""
    handler = impl.Handler.__new__(impl.Handler)
    handler.connector_logger = _Logger()
    handler._metrics = {"c": impl.Counter("c", "d", registry=registry),
                        "e": impl.Enum("e", "d", states=["a"], registry=registry)}
    assert handler._metric_exists("c", pc.Counter)
    assert handler._metric_exists("e", pc.Enum)
    assert not handler._metric_exists("c", pc.Enum)
    assert handler.connector_logger.errors == [
        ("Metric not of expected type", {"name": "c", "expected_type": pc.Enum})]
    # the plain isinstance pycti itself runs
    assert isinstance(handler._metrics["c"], pc.Counter)
    assert isinstance(handler._metrics["e"], pc.Enum)


# -- copy.copy --------------------------------------------------------------------


def test_copy_of_a_counter_counts_into_the_same_value(impl, registry):
    c = impl.Counter("c", "d", registry=registry)
    ref = pc.Counter("c", "d", registry=pc.CollectorRegistry())
    for metric in (c, ref):
        metric.inc()
    dup, ref_dup = copy.copy(c), copy.copy(ref)
    assert type(dup) is type(c) and dup is not c
    for metric in (dup, ref_dup):
        metric.inc(2)
    assert c._value.get() == dup._value.get() == ref._value.get() == ref_dup._value.get() == 3
    assert dup._name == c._name and dup._labelnames == c._labelnames
    # one value: reset() of either resets both, as upstream
    dup.reset()
    ref_dup.reset()
    dup.inc()
    ref_dup.inc()
    assert (c._value.get(), dup._value.get()) == (ref._value.get(), ref_dup._value.get()) == (1, 1)
    c.reset()
    ref.reset()
    c.inc(4)
    ref.inc(4)
    assert (c._value.get(), dup._value.get()) == (ref._value.get(), ref_dup._value.get()) == (4, 4)
    third = copy.copy(dup)
    del dup
    gc.collect()
    c.reset()
    third.inc()
    assert c._value.get() == third._value.get() == 1


def test_copy_shares_the_slot_until_the_last_sharer_dies(impl, registry):
    gc.collect()   # earlier tests' garbage must not free slots between the counts below
    gc.disable()
    try:
        _copies_share_one_slot(impl)
    finally:
        gc.enable()


def _copies_share_one_slot(impl):
    before = impl.stats()["slots_used"]
    c = impl.Counter("c", "d", registry=None)
    c.inc(5)
    dups = [copy.copy(c) for _ in range(3)]
    del c
    gc.collect()
    for i in range(3):
        dups[i].inc()
    assert [d._value.get() for d in dups] == [8, 8, 8]
    assert impl.stats()["slots_used"] == before + 1
    del dups
    gc.collect()
    fresh = impl.Counter("f", "d", registry=None)   # the freed slot is recycled at zero
    assert fresh._value.get() == 0
    assert impl.stats()["slots_used"] == before + 1


def test_copy_of_a_parent_shares_its_children(impl, registry):
    parent = impl.Counter("p", "d", ["k"], registry=registry)
    parent.labels("x").inc()
    dup = copy.copy(parent)
    assert dup.labels("x") is parent.labels("x")
    dup.labels("y").inc(2)
    assert parent.labels("y")._value.get() == 2
    assert dict(dup._metrics) == dict(parent._metrics)


def test_copy_of_an_enum_shares_its_state(impl, registry):
    e = impl.Enum("e", "d", states=["a", "b", "c"], registry=registry)
    e.state("b")
    dup = copy.copy(e)
    assert dup._value == 1
    dup.state("c")
    assert e._value == dup._value == 2   # shared (see README: upstream's copy would be its own)
    with pytest.raises(ValueError):
        dup.state("z")


def test_metrics_can_be_weakly_referenced(impl, registry):
    c = impl.Counter("c", "d", registry=None)
    ref = weakref.ref(c)
    assert ref() is c


# -- a labelled parent: errors as upstream -------------------------------------------


@pytest.mark.parametrize("what", ["reset", "_value", "enum_value"])
def test_labelled_parent_errors_match_prometheus_client(impl, what):
    def call(cls: Any, enum_cls: Any) -> Callable[[], Any]:
        if what == "reset":
            return lambda: cls("m", "d", ["k"], registry=None).reset()
        if what == "_value":
            return lambda: cls("m", "d", ["k"], registry=None)._value
        return lambda: enum_cls("m", "d", ["k"], states=["a"], registry=None)._value

    ref = outcome(call(pc.Counter, pc.Enum))
    assert ref[0] == "AttributeError"
    assert outcome(call(impl.Counter, impl.Enum)) == ref
    parent = impl.Counter("m", "d", ["k"], registry=None)
    assert not hasattr(parent, "_value")
    if sys.version_info >= (3, 10):
        with pytest.raises(AttributeError) as info:
            _ = parent._value
        assert info.value.name == "_value" and info.value.obj is parent


# -- keyword labels() -----------------------------------------------------------------


def test_keyword_labels_find_the_positional_child(impl, registry):
    two = impl.Counter("two", "d", ["kind", "source"], registry=registry)
    child = two.labels("x", "y")
    assert two.labels(kind="x", source="y") is child
    assert two.labels(source="y", kind="x") is child
    assert two.labels(**{"kind": "x", "source": "y"}) is child
    # label names that are equal but not the same object (not interned)
    name = "".join(["ki", "nd"])
    assert two.labels(**{name: "x", "source": "y"}) is child
    three = impl.Counter("three", "d", ["a", "b", "c"], registry=registry)
    assert three.labels(c="3", a="1", b="2") is three.labels("1", "2", "3")
    one = impl.Counter("one", "d", ["kind"], registry=registry)
    assert one.labels(kind="x") is one.labels("x")
    assert one.labels(**{name: "x"}) is one.labels("x")
    assert one.labels(kind=1) is one.labels("1")        # str() of non-str values, as upstream


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.labels(kind="x"),
        lambda m: m.labels(kind="x", other="y"),
        lambda m: m.labels(kind="x", source="y", more="z"),
        lambda m: m.labels(kind="x", kinds="y"),
        lambda m: m.labels("x", source="y"),
        lambda m: m.labels(source="y", Kind="x"),
        lambda m: m.labels(kind="x", source="y").labels(kind="x", source="y"),
    ],
)
def test_keyword_label_errors_match_prometheus_client(impl, call):
    def build(cls: Any) -> Any:
        parent = cls("m", "d", ["kind", "source"], registry=None)
        parent.labels("x", "y")     # an existing child: errors come before any lookup
        return parent

    ref = outcome(lambda: call(build(pc.Counter)))
    assert outcome(lambda: call(build(impl.Counter))) == ref
    assert ref[0] == "ValueError"


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.labels(k="x"),
        lambda m: m.labels(kind="x", k="y"),
        lambda m: m.labels(),
    ],
)
def test_keyword_label_errors_match_prometheus_client_one_label(impl, call):
    ref = outcome(lambda: call(pc.Counter("m", "d", ["kind"], registry=None)))
    assert outcome(lambda: call(impl.Counter("m", "d", ["kind"], registry=None))) == ref


# -- the fast methods keep the core methods' signatures ---------------------------------


def test_inc_and_state_accept_keywords_and_reject_bad_calls(impl, registry):
    c = impl.Counter("c", "d", registry=registry)
    c.inc(amount=2)
    c.inc(3, None)
    c.inc(1, exemplar={"trace": "a"})
    assert c._value.get() == 6
    assert c._value.get_exemplar().labels == {"trace": "a"}
    with pytest.raises(TypeError):
        c.inc(1, None, 3)
    with pytest.raises(TypeError):
        c.inc(amout=1)
    e = impl.Enum("e", "d", states=["a", "b"], registry=registry)
    e.state(state="b")
    assert e._value == 1
    with pytest.raises(TypeError):
        e.state()
    with pytest.raises(TypeError):
        e.state("a", "b")


def test_handler_inc_and_state_accept_keywords(impl):
    handler = impl.Handler.__new__(impl.Handler)
    _HandlerAPI.__init__(handler, _Logger(), False)
    handler.inc("bundle_send")               # not activated: nothing, as pycti
    handler.inc(name="bundle_send", n=2)
    handler.state(state="running", name="state")
    with pytest.raises(TypeError):
        handler.inc()
    with pytest.raises(TypeError):
        handler.state("a", "b", "c")


# -- CPython specialises the hot calls ----------------------------------------------------

SPECIALISED = ("LOAD_ATTR_METHOD", "LOAD_METHOD_")   # 3.12+ / 3.11 families


def _load_opnames(stmt: str, o: Any) -> List[str]:
    namespace: dict = {}
    exec(f"def f(o):\n    for _ in range(64):\n        {stmt}\n", namespace)
    f = namespace["f"]
    for _ in range(4):
        f(o)
    out = io.StringIO()
    dis.dis(f, adaptive=True, file=out)
    return [line.split()[1] if line.split()[0].isdigit() else line.split()[0]
            for line in (raw.strip() for raw in out.getvalue().splitlines())
            if "(NULL|self + " in line or "+ NULL|self)" in line or "LOAD_METHOD" in line]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="no specialising interpreter before CPython 3.11")
@pytest.mark.parametrize("subject, stmt", [
    ("counter", "o.inc()"), ("child", "o.inc()"), ("enum", "o.state('b')"), ("parent", "o.labels('x')"),
])
def test_hot_calls_are_specialised(impl, registry, subject, stmt):
    parent = impl.Counter("p", "d", ["k"], registry=registry)
    subjects = {"counter": impl.Counter("c", "d", registry=registry), "child": parent.labels("x"),
                "enum": impl.Enum("e", "d", states=["a", "b"], registry=registry), "parent": parent}
    opnames = _load_opnames(stmt, subjects[subject])
    assert opnames and all(op.startswith(SPECIALISED) for op in opnames), opnames


@pytest.mark.skipif(sys.version_info < (3, 11), reason="no specialising interpreter before CPython 3.11")
def test_handler_calls_are_specialised(impl):
    handler = impl.Handler.__new__(impl.Handler)
    _HandlerAPI.__init__(handler, _Logger(), False)
    for stmt in ("o.inc('bundle_send')", "o.state('running')"):
        opnames = _load_opnames(stmt, handler)
        assert opnames and all(op.startswith(SPECIALISED) for op in opnames), (stmt, opnames)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the instance dict must stay NULL from CPython 3.12")
@pytest.mark.c_extension
def test_c_instances_never_create_their_dict(registry):
    """Every attribute the public classes set is a slot: the core's dict
    pointer stays NULL through construction, use and exposition
    (LOAD_ATTR_METHOD_LAZY_DICT needs it NULL)."""
    from _support import load

    impl = load("c")
    parent = impl.Counter("p", "d", ["k"], registry=registry)
    objs = [impl.Counter("c", "d", registry=registry), parent, parent.labels("x"),
            impl.Enum("e", "d", ["k"], states=["a"], registry=registry),
            impl.Enum("f", "d", states=["a"], registry=registry)]
    objs.append(objs[3].labels("y"))
    for o in objs[:3]:
        if o is not parent:
            o.inc(1, {"t": "x"})
            o.reset()
    pc.generate_latest(registry)
    for o in objs:
        copy.copy(o)
        offset = type(o).__dictoffset__
        assert offset > 0
        assert ctypes.c_void_p.from_address(id(o) + offset).value is None, (o, o.__dict__)
    handler = impl.Handler.__new__(impl.Handler)
    _HandlerAPI.__init__(handler, _Logger(), False)
    handler._metrics = {}
    handler.inc("bundle_send")
    objs.append(handler)
    for o in objs:
        assert ctypes.c_void_p.from_address(id(o) + type(o).__dictoffset__).value is None, o
    # other attributes still work (they create the dict)
    objs[0].note = "x"
    assert objs[0].__dict__ == {"note": "x"}


def test_bind_hot_methods_checks_its_classes(impl):
    with pytest.raises(TypeError):
        impl.core.bind_hot_methods(impl.Enum, impl.Counter)
    with pytest.raises(TypeError):
        impl.dispatch.bind_hot_methods(impl.Counter)


def test_threads_counting_through_copies_give_exact_totals(impl, registry):
    """Copies share one value: increments through the original and its
    copies from many threads at once all land in it (no lock, no GIL needed)."""
    import threading

    c = impl.Counter("c", "d", registry=registry)
    targets = [c, *(copy.copy(c) for _ in range(3))]
    per_thread, threads = 5_000, 8
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        metric = targets[i % len(targets)]
        start.wait()
        for _ in range(per_thread):
            metric.inc()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert all(m._value.get() == per_thread * threads for m in targets)


def test_user_subclasses_keep_working(impl, registry):
    """The fast methods are bound to the public classes; a user's subclass
    inherits them (unspecialised calls, same results)."""
    class MyCounter(impl.Counter):
        pass

    class MyEnum(impl.Enum):
        pass

    c = MyCounter("c", "d", ["k"], registry=registry)
    c.labels("x").inc(2)
    c.labels(k="x").inc()
    assert type(c.labels("x")) is MyCounter and c.labels("x")._value.get() == 3
    e = MyEnum("e", "d", states=["a", "b"], registry=registry)
    e.state("b")
    assert e._value == 1 and isinstance(e, pc.Enum)
