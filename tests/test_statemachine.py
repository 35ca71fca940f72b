"""Model-based test: the Cython core, the pure-Python twin and prometheus_client
itself receive the same random operations and must agree on every outcome and
on every exposition (text and OpenMetrics, ``_created`` values aside)."""

from __future__ import annotations

import os

import prometheus_client as pc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry

from _parity import PC_CLEAR_UNLABELLED_OK, PC_ENUM_VALIDATES_FIRST, expositions, outcome
from _support import extensions_disabled, load


def _implementations():
    names = ["python"] if extensions_disabled() else ["python", "c"]
    return [(impl.name, (impl.Counter, impl.Enum)) for impl in map(load, names)]


NAMES = ["jobs", "jobs_total", "bytes", "state", "x_total_total"]
label_value = st.one_of(st.text(alphabet='ab"\\\n\u00e9 ', max_size=4), st.integers(-2, 2), st.booleans())
amount = st.one_of(
    st.integers(min_value=0, max_value=2**40),
    st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.integers(min_value=-5, max_value=-1),
    st.just(float("nan")),
    st.sampled_from(["1", None]),
)
NEGATIVE = "Counters can only be incremented by non-negative amounts."
STATES = ["idle", "running", "stopped", "b"]


class SameExposition(RuleBasedStateMachine):
    counters = Bundle("counters")
    enums = Bundle("enums")

    @initialize()
    def setup(self):
        self.impls = [("prometheus_client", (pc.Counter, pc.Enum)), *_implementations()]
        self.registries = {name: CollectorRegistry() for name, _ in self.impls}
        self.used = set()

    def _each(self, make):
        """Run ``make(name, Counter, Enum, registry)`` on every implementation;
        all must behave alike.  Returns the objects, or None if all raised."""
        objs, outcomes = [], []
        for name, (counter_cls, enum_cls) in self.impls:
            box = []
            outcomes.append(outcome(lambda box=box, c=counter_cls, e=enum_cls, name=name:
                                    box.append(make(c, e, self.registries[name]))))
            objs.append(box[0] if box else None)
        assert all(o == outcomes[0] for o in outcomes), outcomes
        return objs if outcomes[0][0] == "ok" else None

    @rule(target=counters, name=st.sampled_from(NAMES), namespace=st.sampled_from(["", "ns"]),
          labelnames=st.sampled_from([(), ("a",), ("a", "b")]), unit=st.sampled_from(["", "bytes"]))
    def new_counter(self, name, namespace, labelnames, unit):
        objs = self._each(lambda C, E, reg: C(name, "Help " + name, labelnames, namespace=namespace,
                                               unit=unit, registry=reg))
        return (objs, len(labelnames)) if objs else (None, 0)

    @rule(target=enums, name=st.sampled_from(NAMES), labelnames=st.sampled_from([(), ("a",)]),
          # no states: before 0.26 prometheus_client registers the broken enum, then raises (a bug
          # fastmetrics does not copy), so that case is compared only with 0.26+
          states=st.lists(st.sampled_from(STATES), min_size=0 if PC_ENUM_VALIDATES_FIRST else 1, max_size=4,
                          unique=True))
    def new_enum(self, name, labelnames, states):
        objs = self._each(lambda C, E, reg: E(name, "Enum " + name, labelnames, states=states, registry=reg))
        return (objs, len(labelnames)) if objs else (None, 0)

    def _targets(self, metric, values):
        objs, nlabels = metric
        if objs is None:
            return None
        if nlabels == 0:
            return objs
        values = (list(values) * 2)[:nlabels]
        return [o.labels(*values) for o in objs]

    @rule(metric=counters, values=st.lists(label_value, min_size=1, max_size=2), a=amount)
    def inc(self, metric, values, a):
        targets = self._targets(metric, values)
        if targets and a != a:
            # Deliberate divergence: prometheus_client accepts NaN and the counter
            # is NaN forever; fastmetrics rejects it and keeps the total.
            for t in targets[1:]:
                assert outcome(lambda t=t: t.inc(a)) == ("ValueError", NEGATIVE)
        elif targets:
            results = [outcome(lambda t=t: t.inc(a)) for t in targets]
            assert all(r == results[0] for r in results), results

    @rule(metric=counters, values=st.lists(label_value, min_size=1, max_size=2))
    def inc_with_exemplar(self, metric, values):
        targets = self._targets(metric, values)
        if targets:
            for t in targets:
                t.inc(1, exemplar={"trace_id": "t1"})

    @rule(metric=counters, values=st.lists(label_value, min_size=1, max_size=2))
    def reset(self, metric, values):
        targets = self._targets(metric, values)
        if targets:
            for t in targets:
                t.reset()

    @rule(metric=enums, values=st.lists(label_value, min_size=1, max_size=2),
          state=st.sampled_from([*STATES, "bogus"]))
    def set_state(self, metric, values, state):
        targets = self._targets(metric, values)
        if targets:
            results = [outcome(lambda t=t: t.state(state)) for t in targets]
            assert all(r == results[0] for r in results), results

    @rule(metric=st.one_of(counters, enums), values=st.lists(label_value, min_size=0, max_size=3))
    def remove(self, metric, values):
        objs, _ = metric
        if objs:
            results = [outcome(lambda o=o: o.remove(*values)) for o in objs]
            assert all(r == results[0] for r in results), results

    @rule(metric=st.one_of(counters, enums))
    def clear(self, metric):
        objs, nlabels = metric
        if objs:
            results = [outcome(lambda o=o: o.clear()) for o in objs]
            if nlabels == 0 and not PC_CLEAR_UNLABELLED_OK:
                # prometheus_client < 0.26 raises AttributeError here; fastmetrics does nothing, as 0.26 does
                results = results[1:]
            assert all(r == ("ok", None) for r in results), results

    @rule(metric=st.one_of(counters, enums), values=st.lists(label_value, min_size=0, max_size=3),
          use_kwargs=st.booleans())
    def labels_call(self, metric, values, use_kwargs):
        objs, _ = metric
        if objs:
            if use_kwargs:
                kw = dict(zip(("a", "b", "c"), values))
                results = [outcome(lambda o=o: o.labels(**kw)) for o in objs]
            else:
                results = [outcome(lambda o=o: o.labels(*values)) for o in objs]
            assert all(r == results[0] for r in results), results

    @invariant()
    def same_exposition(self):
        if not hasattr(self, "registries"):
            return
        expected = expositions(self.registries["prometheus_client"])
        for name, _ in self.impls[1:]:
            assert expositions(self.registries[name]) == expected, name


TestSameExposition = SameExposition.TestCase
TestSameExposition.settings = settings(
    max_examples=int(os.environ.get("FASTMETRICS_HYPOTHESIS_EXAMPLES", "150")),
    stateful_step_count=30,
    deadline=None,
    # filter_too_much: rules that draw from a still-empty bundle (no counter or
    # enum created yet) are discarded, which is inherent to the machine, not a
    # weak strategy; on a bad draw it tripped the health check (seen in CI).
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

