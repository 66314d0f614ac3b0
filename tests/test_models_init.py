"""The pipeline's frozen dataclasses, built by `quick_init`'s `__init__`, are what their own `__init__` builds."""

from __future__ import annotations

import dataclasses
import pickle
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.extract.mail import DocumentCandidate, Mail, TextCandidate
from mailhook.extract.simple_mail import SimpleMail
from mailhook.models import Attempt, Delivery, Event, Extraction, FolderPosition, Receipt, quick_init

QUICK = [Attempt, Delivery, Event, Extraction, Receipt, DocumentCandidate, TextCandidate, Mail, SimpleMail]

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.decimals(allow_nan=False),
    st.tuples(st.text(max_size=4)), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def _reference(cls: type, **given: Any) -> Any:
    """Build an instance as the frozen dataclass's own `__init__` does: `object.__setattr__` per field."""
    made = object.__new__(cls)
    for item in dataclasses.fields(cls):
        if item.name in given:
            value = given[item.name]
        elif item.default is not dataclasses.MISSING:
            value = item.default
        elif item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        else:
            raise TypeError(item.name)
        object.__setattr__(made, item.name, value)
    return made


def _arguments(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Draw keyword arguments for `cls`: every required field, any of the others."""
    items = dataclasses.fields(cls)
    required = {f.name: _VALUES for f in items
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    optional = {f.name: _VALUES for f in items if f.name not in required}
    return st.fixed_dictionaries(required, optional=optional)


@pytest.mark.parametrize("cls", QUICK, ids=lambda cls: cls.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_an_instance_holds_the_fields_and_values_the_dataclass_init_stores(cls: type, data: st.DataObject) -> None:
    given = data.draw(_arguments(cls))
    quick, reference = cls(**given), _reference(cls, **given)
    assert type(quick) is cls
    for item in dataclasses.fields(cls):
        if item.name in given or item.default_factory is dataclasses.MISSING:
            assert getattr(quick, item.name) is getattr(reference, item.name)
        else:  # a new value from the factory for each instance
            assert type(getattr(quick, item.name)) is type(getattr(reference, item.name))
    assert quick == reference
    assert repr(quick) == repr(reference)
    assert _hash(quick) == _hash(reference)


def _hash(value: object) -> object:
    try:
        return hash(value)
    except TypeError as exc:  # a dict field: unhashable in both
        return str(exc)


@pytest.mark.parametrize("cls", QUICK, ids=lambda cls: cls.__name__)
def test_positional_arguments_fill_the_fields_in_order(cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    made = cls(*names)
    assert [getattr(made, name) for name in names] == names


def test_a_default_factory_gives_each_instance_its_own_value() -> None:
    first, second = Event("T", "payload", "2", "json"), Event("T", "payload", "2", "json")
    assert first.payload == {} and first.payload is not second.payload
    assert Attempt().payload == {} and Attempt().payload is not Attempt().payload


@pytest.mark.parametrize("cls", QUICK, ids=lambda cls: cls.__name__)
def test_an_instance_stays_frozen(cls: type) -> None:
    made = cls(*[None] * len(dataclasses.fields(cls)))
    for item in dataclasses.fields(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, item.name, 1)
    for instance in (made, _reference(cls, **{f.name: None for f in dataclasses.fields(cls)})):
        with pytest.raises((TypeError, AttributeError)):  # no __dict__ (3.11 says so by a TypeError)
            instance.unknown = 1


def test_wrong_arguments_are_refused_as_the_dataclass_init_refuses_them() -> None:
    with pytest.raises(TypeError, match=r"^Event\.__init__\(\) missing 4 required positional arguments"):
        Event()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^Event\.__init__\(\) got an unexpected keyword argument 'bogus'"):
        Event("T", "payload", "2", "json", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^Attempt\.__init__\(\) takes from 1 to 10 positional arguments"):
        Attempt(*range(10))  # type: ignore[arg-type]


def test_a_replaced_copy_and_a_pickled_one_are_equal_instances() -> None:
    event = Event("T", "payload", "2", "json", resource_id=3, billed_amount=Decimal("0.5"),
                  attempts=(Attempt(record_id=1, payload={"a": 1}),))
    assert dataclasses.replace(event, resource_id=4) == _reference(
        Event, **{**{f.name: getattr(event, f.name) for f in dataclasses.fields(Event)}, "resource_id": 4})
    assert pickle.loads(pickle.dumps(event)) == event


def test_a_subclass_with_its_own_slots_is_built_by_the_dataclass_init() -> None:
    class Tagged(Event):
        __slots__ = ("tag",)

    made = Tagged("T", "payload", "2", "json", resource_id=5)
    assert type(made) is Tagged and made.resource_id == 5 and made.payload == {} and made.attempts == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.resource_id = 6  # type: ignore[misc]


def test_a_field_quick_init_cannot_store_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="not a plain positional field"):
        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Hidden:
            seen: int
            unseen: int = dataclasses.field(default=0, init=False)


def test_a_class_left_undecorated_keeps_its_dataclass_init() -> None:
    assert FolderPosition.__init__.__qualname__ == "FolderPosition.__init__"
    assert FolderPosition("a", "INBOX", 1, 2) == FolderPosition("a", "INBOX", 1, 2)
