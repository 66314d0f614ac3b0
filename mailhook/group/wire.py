"""A delivery, its rows and its receipt as the plain tuples a worker and the parent pickle between them.

pickle keeps a frozen, slotted dataclass (`Delivery`, `Receipt`) as its state
and restores it through the `__setstate__` dataclasses writes in Python (an
`object.__setattr__` per field), and a NamedTuple (`Rows`) through a Python
`__getnewargs__` and `__new__`: a 2.2 KB delivery with its rows cost ~33 µs to
dump and load, a receipt ~8 µs. Their values as plain tuples pickle in C, and
the classes' own constructors (`quick_init`'s for the dataclasses) build them
again: ~11 µs and ~2 µs. The values are in field order; both ends run the
same code (the parent starts its workers from its own interpreter and tree).
"""

from __future__ import annotations

import operator
from dataclasses import fields
from typing import Any

from mailhook.models import Delivery, Extraction, Receipt
from mailhook.store.rows import Rows

_DELIVERY = operator.attrgetter(*(item.name for item in fields(Delivery)))
_RECEIPT = operator.attrgetter(*(item.name for item in fields(Receipt)))

# What a worker sends for a delivery's extraction: its rows' values, an extraction that could not be rows, or None.
Found = tuple[Any, ...] | Extraction | None


def delivery_values(delivery: Delivery) -> tuple[Any, ...]:
    """Return a delivery's field values, in field order."""
    values: tuple[Any, ...] = _DELIVERY(delivery)
    return values


def delivery(values: tuple[Any, ...]) -> Delivery:
    """Return the delivery whose field values these are."""
    return Delivery(*values)


def found_values(found: Extraction | Rows | None) -> Found:
    """Return rows as their values (a plain tuple); an extraction, or None (stored pending), as itself."""
    return tuple(found) if isinstance(found, Rows) else found


def found(values: Found) -> Extraction | Rows | None:
    """Return the rows whose values these are; an extraction, or None, as itself."""
    return Rows._make(values) if isinstance(values, tuple) else values


def receipt_values(receipt: Receipt) -> tuple[Any, ...]:
    """Return a receipt's field values, in field order."""
    values: tuple[Any, ...] = _RECEIPT(receipt)
    return values


def receipt(values: tuple[Any, ...]) -> Receipt:
    """Return the receipt whose field values these are."""
    return Receipt(*values)
