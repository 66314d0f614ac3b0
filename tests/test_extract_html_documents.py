"""An HTML body's visible text is searched for documents exactly when it could hold one."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.extract.embedded import (
    _UNCLOSED_BRACKET,
    documents_in_body,
    find_documents,
    html_to_text,
)
from mailhook.extract.quoting import QUOTE_PREFIX, has_quoted_line


def _every_variant_searched(body: str, is_html: bool) -> list[bytes]:
    """documents_in_body as it was: an HTML body's visible text always made and searched."""
    variants = [body, html_to_text(body)] if is_html else [body]
    found: list[bytes] = []
    for variant in variants:
        if has_quoted_line(variant):
            variant = QUOTE_PREFIX.sub("", variant)
        found += find_documents(variant)
    return found


# Pieces that make tags, stray brackets, entities, braces, hidden elements and document starts meet in every way.
_PIECES = st.sampled_from(
    ["<", ">", "<b>", "</b>", "<br>", "<br/>", "</p>", "< br >", "<pre>", "</pre>", "<td>", "</tr>",
     "<script>", "</script>", "<style>", "</style>", "<head>", "</head>", "<SCRIPT >", "&lt;", "&gt;", "&amp;",
     "&quot;", "&#60;", "&#x3c;", "&LT", "&lt", "&#123;", "&lbrace;", "{", "}", '"TextNotification"',
     '"events"', ":", "1", "<?xml", "?>", "<TextNotification>", "</TextNotification>", "TextNotification",
     "<CallFinished", "/>", "<!-- x -->", "\n", "\n>", " ", "a", "\u017f", "é"]
)
_MARKUP = st.lists(_PIECES, max_size=40).map("".join)


@settings(max_examples=5000, deadline=None)
@given(_MARKUP)
def test_an_html_body_reads_to_the_documents_its_visible_text_always_gave(markup: str) -> None:
    assert documents_in_body(markup, True) == _every_variant_searched(markup, True)
    assert documents_in_body(markup, False) == _every_variant_searched(markup, False)


def test_a_document_behind_an_entity_a_brace_or_an_unclosed_bracket_is_still_found() -> None:
    for markup in (
        "<p>&lt;TextNotification&gt;&lt;/TextNotification&gt;</p>",
        '<p>{"events": []}</p>',
        # A "<" that no ">" closes before the next "<" survives the tag removal: "<" + "<b>" leaves "<".
        "<p><<b>TextNotification></p>",
    ):
        assert documents_in_body(markup, True) == _every_variant_searched(markup, True) != []


def test_a_table_of_fields_under_a_hidden_style_holds_no_document() -> None:
    table = "<html><head><style>td{padding:4px}</style></head><table><tr><td>Text ID</td><td>1</td></tr></table><"
    assert documents_in_body(table, True) == _every_variant_searched(table, True) == []


@settings(max_examples=2000, deadline=None)
@given(_MARKUP)
def test_the_possessive_unclosed_bracket_search_finds_what_the_backtracking_one_finds(markup: str) -> None:
    # No shorter run of non-brackets is followed by "<" or the end, so giving characters back never helps.
    found = _UNCLOSED_BRACKET.search(markup)
    expected = re.search(r"<[^<>]*(?:<|\Z)", markup)
    assert (found and found.span()) == (expected and expected.span())
