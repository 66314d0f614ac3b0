"""The document search's scans in C find what the patterns they replaced found."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.extract.embedded import (
    _JSON_KEYS,
    _XML_START,
    _XML_START_WORDS,
    _closing_end,
    _occurrences,
    find_documents,
)

# Pieces that make closing tags, their near misses and blanks (Unicode ones too) meet in every way.
_CLOSING_PIECES = st.sampled_from(
    ["</", "</a", "</ab", "</a:b", "</a.b", "</a-b", "a", "b", ">", " ", "\t", "\n", "\u2003", "\u00a0", "<",
     "/", "</a >", "</a\n>", "</ab>", "x"]
)
_NAMES = st.sampled_from(["a", "ab", "a:b", "a.b", "a-b", "TextNotification", "n:TextNotification"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_CLOSING_PIECES, max_size=30).map("".join), _NAMES, st.integers(0, 40))
def test_a_closing_tag_is_found_where_its_pattern_finds_it(text: str, name: str, pos: int) -> None:
    found = re.compile(r"</" + re.escape(name) + r"\s*>").search(text, pos)
    assert _closing_end(text, "</" + name, pos) == (len(text) if found is None else found.end())


_KEY_PIECES = st.sampled_from(
    ['"events"', '"events', 'events"', '"', "events", '"TextNotification"', '"CallFinished"',
     '"BroadcastNotification"', "TextNotification", "{", "}", ":", " ", "x"]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_KEY_PIECES, max_size=30).map("".join))
def test_a_key_occurs_where_finditer_finds_it(text: str) -> None:
    for key in _JSON_KEYS:
        assert _occurrences(text, key) == [m.start() for m in re.finditer(re.escape(key), text)]


_START_PIECES = st.sampled_from(
    ["<?xml", "<?xm", "<?XML", "<", "?", "xml", "TextNotification", "TextNotificatio", "CallFinished",
     "BroadcastNotification", "Envelope", "Envelop", "envelope", "<n:", "<soap:", ":", "n", " ", ">", "\n",
     "Notification", "{", "}", '"events"']
)


@settings(max_examples=5000, deadline=None)
@given(st.lists(_START_PIECES, max_size=30).map("".join))
def test_a_text_without_a_start_word_holds_no_xml_start(text: str) -> None:
    if not any(word in text for word in _XML_START_WORDS):
        assert _XML_START.search(text) is None
        assert not any(doc.startswith(b"<") for doc in find_documents(text))


def test_documents_are_found_after_closing_tags_with_blanks_and_near_misses() -> None:
    text = "<TextNotification><a/></TextNotificationX></TextNotification\u2003\n>tail <?xml version='1.0'?><b/>"
    assert find_documents(text) == [
        b"<TextNotification><a/></TextNotificationX></TextNotification\xe2\x80\x83\n>",
        b"<?xml version='1.0'?><b/>",
    ]
    unclosed = "<TextNotification><a/></TextNotificationX>"
    assert find_documents(unclosed) == [unclosed.encode()]  # runs to the end, so its reader says why
