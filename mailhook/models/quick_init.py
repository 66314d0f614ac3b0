"""`quick_init`: a frozen, slotted dataclass's `__init__` that stores its fields as a plain class's would."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

_Frozen = TypeVar("_Frozen", bound=type)


class _Factory:
    """The default of a parameter whose field has a `default_factory` (shown as dataclasses shows it)."""

    def __repr__(self) -> str:
        return "<factory>"


def quick_init(cls: _Frozen) -> _Frozen:
    """Give a frozen, slotted dataclass an `__init__` that stores its fields as a plain class's would.

    The frozen `__init__` dataclasses writes stores each field through
    `object.__setattr__` (a descriptor call with an argument tuple, ~0.3 µs a
    field: 28 of them make an `Event` cost ~8 µs). This one turns the new
    instance into a twin class with the same slots and no frozen
    `__setattr__`, stores each field with a plain attribute store, and turns it
    back: the same instance, fields and values (tests/test_models_init.py compares
    the two on every class it decorates). A subclass (another slot layout)
    keeps the dataclass's own `__init__`.
    """
    frozen_init = cls.__dict__["__init__"]
    # CPython lets `__class__` move between heap types with the same base and the same slots.
    twin = type(f"_Open{cls.__name__}", (), {"__slots__": cls.__dict__["__slots__"]})
    names: dict[str, Any] = {"_cls": cls, "_twin": twin, "_frozen_init": frozen_init,
                             "_set": object.__setattr__, "_factory": _Factory()}
    params, values = [], []
    for item in fields(cls):
        if not item.init or item.kw_only:
            raise TypeError(f"quick_init: {cls.__name__}.{item.name} is not a plain positional field")
        name = item.name
        if item.default is not MISSING:
            names[f"_default_{name}"] = item.default
            params.append(f"{name}=_default_{name}")
            values.append(name)
        elif item.default_factory is not MISSING:
            names[f"_make_{name}"] = item.default_factory
            params.append(f"{name}=_factory")
            values.append(f"(_make_{name}() if {name} is _factory else {name})")
        else:
            params.append(name)
            values.append(name)
    # Generated from the fields, as dataclasses generates its own, so that it cannot drift from them.
    source = (
        f"def __init__(self, {', '.join(params)}):\n"
        f"    if type(self) is not _cls:\n"
        f"        return _frozen_init(self, {', '.join(values)})\n"
        f"    _set(self, '__class__', _twin)\n"
        + "".join(f"    self.{item.name} = {value}\n" for item, value in zip(fields(cls), values, strict=True))
        + "    self.__class__ = _cls\n"
    )
    exec(source, names)
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = frozen_init.__doc__
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
    return cls
