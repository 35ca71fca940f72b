"""Pure-Python twin of :mod:`fastmetrics._dispatch_c`: name -> metric dispatch
over the shard store's metrics, knowing no metric names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from ._core_py import CounterCore, EnumCore
from ._upcalls import DispatchUpcalls

implementation = "python"


if TYPE_CHECKING:   # the contract, for type checkers only: at run time the base is object
    _DispatcherBase = DispatchUpcalls
else:
    _DispatcherBase = object


class Dispatcher(_DispatcherBase):
    """Name -> metric dispatch (see the C twin, :mod:`fastmetrics._dispatch_c`,
    for the contract)."""

    _counter_map: Optional[Dict[str, CounterCore]] = None
    _enum_map: Optional[Dict[str, EnumCore]] = None
    _on = False
    _activated: Any = False

    @property
    def activated(self) -> Any:
        return self._activated

    @activated.setter
    def activated(self, value: Any) -> None:
        self._activated = value
        self._on = bool(value)

    def _set_dispatch(self, counters: Mapping[str, CounterCore], enums: Mapping[str, EnumCore]) -> None:
        """Install the name -> metric maps, once, before the handler is shared."""
        if self._counter_map is not None:
            raise RuntimeError("dispatch maps are already installed")
        if not all(isinstance(c, CounterCore) for c in counters.values()):
            raise TypeError("counters must be fastmetrics counters")
        if not all(isinstance(e, EnumCore) for e in enums.values()):
            raise TypeError("enums must be fastmetrics enums")
        self._counter_map = dict(counters)
        self._enum_map = dict(enums)

    def inc(self, name: str, n: float = 1) -> None:
        """Add ``n`` to the counter named ``name`` (``_inc_miss`` if none)."""
        if not self._on:
            return
        counters = self._counter_map
        if counters is not None:
            counter = counters.get(name)
            if counter is not None:
                counter._add(n)
                return
        self._inc_miss(name, n)

    def state(self, state: str, name: str = "state") -> None:
        """Set the enum named ``name`` to ``state`` (``_state_miss`` if none)."""
        if not self._on:
            return
        enums = self._enum_map
        if enums is not None:
            enum = enums.get(name)
            if enum is not None:
                enum._set(state)
                return
        self._state_miss(state, name)


def bind_hot_methods(handler_class: type) -> None:
    """The C twin binds ``inc``/``state`` as method descriptors of the handler
    class so CPython specialises their calls; Python methods are specialised
    as they are, so here this only checks the class (``TypeError`` unless a
    subclass of Dispatcher)."""
    if not (isinstance(handler_class, type) and issubclass(handler_class, Dispatcher)):
        raise TypeError("handler_class must be a subclass of Dispatcher")
