"""Find CallFire documents embedded in an email's text: XML, SOAP or JSON, escaped, quoted or forwarded.

Pure text work for `mailhook.extract.mail`: a document is found wherever it starts,
in HTML (tags removed, entities undone), behind `>` quote prefixes and after
inline-forward header blocks, and cut at its own end whatever follows it.
"""

from __future__ import annotations

import bisect
import functools
import html
import json
import re

from mailhook.extract.quoting import QUOTE_PREFIX, has_quoted_line

_XML_START = re.compile(r"<\?xml\b|<(?:[\w.-]+:)?(?:TextNotification|CallFinished|BroadcastNotification|Envelope)\b")
_XML_DECL_END = re.compile(r"\?>")
_ELEMENT = re.compile(r"\s*(?:<!--.*?-->\s*)*<([\w.:-]+)", re.DOTALL)
_JSON_KEYS = ('"TextNotification"', '"CallFinished"', '"BroadcastNotification"', '"events"')
# Every HTML pattern stops at the next "<" ([^<>]*): an unclosed tag repeated
# a million times must cost one pass, not one pass per tag.
_HTML_BREAK = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d|/pre)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")
# A "<" that no ">" closes before the next "<" or the end: _HTML_TAG leaves it in the text. Possessive: at a
# closed tag's "<" (nearly every one) the match fails at once, not after giving back its text a character at a time.
_UNCLOSED_BRACKET = re.compile(r"<[^<>]*+(?:<|\Z)")
_HTML_HIDDEN = re.compile(r"<(script|style|head)\b|</(script|style|head)\s*>", re.IGNORECASE)
# The same in an ASCII text, where IGNORECASE is exactly both cases of each letter (elsewhere it also
# takes U+017F for "s"): spelt as classes, the match tried at every "<" costs a third less.
_HTML_HIDDEN_ASCII = re.compile(
    r"<([Ss][Cc][Rr][Ii][Pp][Tt]|[Ss][Tt][Yy][Ll][Ee]|[Hh][Ee][Aa][Dd])\b"
    r"|</([Ss][Cc][Rr][Ii][Pp][Tt]|[Ss][Tt][Yy][Ll][Ee]|[Hh][Ee][Aa][Dd])\s*>"
)
# Outside every object: the next brace (quotes there are prose). Inside one: the next brace that is
# not in a string, skipping whole strings (an unclosed one runs to the end; a backslash escapes the
# next character). Possessive, so a text without a brace costs one pass, not a backtracking search.
_JSON_BRACE = re.compile(r"[{}]")
_JSON_NEXT_BRACE = re.compile(r'(?:[^{}"]++|"[^"\\]*+(?:\\.[^"\\]*+)*+"?+)*+([{}])', re.DOTALL)
# Every _XML_START match holds one of these: a text holding none is told by scans in C (str.find skips by the
# word's length), not by the pattern tried at every "<" of an HTML body.
_XML_START_WORDS = ("<?xml", "TextNotification", "CallFinished", "BroadcastNotification", "Envelope")
# What may follow "</" and the root's name in its closing tag.
_CLOSING_TAIL = re.compile(r"\s*>")
_XML_ENCODING = re.compile(r"(<\?xml[^>]*?)\s+encoding\s*=\s*([\"'])[^\"']*\2")
# The entities html.escape writes, "&amp;" last.
_ESCAPE_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'", "&amp;": "&"}


def find_documents(text: str) -> list[bytes]:
    """Return every XML/SOAP/JSON notification embedded in `text`, in order, as UTF-8 bytes.

    A document whose end is missing runs to the end of the text, so the
    document reader can say precisely why it is truncated.
    """
    found: list[bytes] = []
    spans: list[tuple[int, int]] = []
    if "<" in text and any(word in text for word in _XML_START_WORDS):
        pos = 0
        while (m := _XML_START.search(text, pos)) is not None:
            start, end = m.start(), _xml_end(text, m.start())
            spans.append((start, end))
            found.append(_utf8_document(text[start:end]))
            pos = end
    if "{" in text and any(k in text for k in _JSON_KEYS):
        xml_starts = [s for s, _ in spans]
        for start, end in _json_spans(text):
            k = bisect.bisect_right(xml_starts, start) - 1
            if k < 0 or start >= spans[k][1]:  # not inside an XML document
                spans.append((start, end))
                found.append(text[start:end].encode("utf-8", "replace"))
    if len(found) > 1:
        order = sorted(range(len(found)), key=lambda k: spans[k][0])
        found = [found[k] for k in order]
    return found


def documents_in_body(body: str, is_html: bool) -> list[bytes]:
    """Search a body (unquoted), and an HTML body also with tags removed and entities undone."""
    variants = [body]
    if is_html and _visible_text_may_hold_document(body):
        variants.append(html_to_text(body))
    found: list[bytes] = []
    for variant in variants:
        if has_quoted_line(variant):
            # A quoted copy is only readable unquoted; an unquoted document in the
            # same text loses nothing, as its lines do not start with ">".
            variant = QUOTE_PREFIX.sub("", variant)
        found += find_documents(variant)
    return found


def _visible_text_may_hold_document(markup: str) -> bool:
    """Say whether html_to_text(markup) may hold a "<" or "{", without which find_documents finds nothing there.

    Its text is the markup without hidden elements, breaks and tags, entities
    undone: a "<" or "{" there comes from an entity ("&"), a brace, or a "<"
    that no ">" closes before the next "<" (every other "<" starts a tag or a
    break that is removed, whatever was removed before it). An HTML table of
    fields has none, and its three regex passes are saved (docs/performance-log.md,
    parse7); drop_hidden's result is cached for the text reader anyway.
    """
    visible = drop_hidden(markup)
    return "&" in visible or "{" in visible or _UNCLOSED_BRACKET.search(visible) is not None


def html_to_text(markup: str) -> str:
    """Turn HTML into its visible text, one line per break/paragraph/row, entities decoded."""
    text = _HTML_BREAK.sub("\n", drop_hidden(markup))
    return unescape(_HTML_TAG.sub("", text))


def unescape(text: str) -> str:
    """Return html.unescape(text), without its per-entity callback when only html.escape's entities occur."""
    ampersands = text.count("&")
    if not ampersands:
        return text
    if ampersands != sum(text.count(entity) for entity in _ESCAPE_ENTITIES):
        return html.unescape(text)
    # Every "&" starts one of these, so replacing them one kind at a time ("&amp;" last, so
    # no "&" it yields is read again) gives what unescape's single left-to-right pass gives.
    for entity, char in _ESCAPE_ENTITIES.items():
        text = text.replace(entity, char)
    return text


# The same HTML body is passed three times: its document search (html_to_text), then the text
# reader's table and line reading; the last few results are kept (a pure function of an immutable str),
# for bodies up to this many characters only, so that the cache never holds more than a few MB.
CACHED_CHARS = 65_536


def drop_hidden(markup: str) -> str:
    """Remove <script>, <style> and <head> elements (an unclosed one runs to the end) in one pass."""
    return _drop_hidden(markup) if len(markup) > CACHED_CHARS else _drop_hidden_cached(markup)


def _drop_hidden(markup: str) -> str:
    if "<" not in markup:
        return markup
    return drop_matched(markup, _HTML_HIDDEN_ASCII if markup.isascii() else _HTML_HIDDEN)


def drop_matched(markup: str, hiding: re.Pattern[str]) -> str:
    """Return markup without what lies between an opening `hiding` matches and its own closing."""
    out: list[str] = []
    pos = 0
    hidden: str | None = None
    for m in hiding.finditer(markup):
        opening, closing = m.group(1), m.group(2)
        if hidden is None and opening:
            out.append(markup[pos : m.start()])
            hidden = opening.lower()
        elif hidden is not None and closing and closing.lower() == hidden:
            hidden = None
            pos = m.end()
    if hidden is None:
        out.append(markup[pos:])
    return "".join(out)


_drop_hidden_cached = functools.lru_cache(maxsize=4)(_drop_hidden)


def _xml_end(text: str, start: int) -> int:
    """Return the end of the XML document starting at `start` (its root's closing tag)."""
    pos = start
    if text.startswith("<?xml", start):
        decl = _XML_DECL_END.search(text, start)
        if decl is None:
            return len(text)
        pos = decl.end()
    root = _ELEMENT.match(text, pos)
    if root is None:
        return len(text)
    name = root.group(1)
    opening = text.find(">", root.end())
    if opening > 0 and text[opening - 1] == "/":
        return opening + 1
    return _closing_end(text, "</" + name, root.end())


def _closing_end(text: str, closing: str, pos: int) -> int:
    """Return the end of the first `closing` (`</name`) at or after `pos` followed by `\\s*>`, or len(text).

    What `re.compile(closing + r"\\s*>").search(text, pos)` finds, by str.find (which skips ahead by the
    name's length) and a match at each place found: no pattern compiled or looked up per document.
    """
    at = text.find(closing, pos)
    while at >= 0:
        tail = _CLOSING_TAIL.match(text, at + len(closing))
        if tail is not None:
            return tail.end()
        at = text.find(closing, at + 1)
    return len(text)


def _json_spans(text: str) -> list[tuple[int, int]]:
    """Return the outermost `{ … }` spans naming a CallFire notification, in one pass.

    Strings are only tracked inside an object, so a stray quote in prose
    cannot hide what follows. A notification still open at the end (truncated)
    runs to the end, so the reader can say why it cannot be read.
    """
    keys = sorted(at for key in _JSON_KEYS for at in _occurrences(text, key))
    closed: list[tuple[int, int]] = []
    opened: list[int] = []
    pos = 0
    declined = False
    while True:
        if opened:
            m = _JSON_NEXT_BRACE.match(text, pos)
            if m is None:
                break
            i = m.start(1)
        else:
            m = _JSON_BRACE.search(text, pos)
            if m is None:
                break
            i = m.start()
            if text[i] == "{" and not declined:
                end = _valid_object_end(text, i)
                if end is not None:
                    # What the brace-by-brace scan below would find from here: this object closed at `end`, and
                    # any object inside it, which is dropped for it (a key inside one is inside this one too).
                    if _has_key(keys, i, end):
                        closed.append((i, end))
                    pos = end
                    continue
                # json's error counts the lines before where it stopped: tried at each of many broken objects,
                # that would cost a pass over the text each time, so after one the rest is scanned brace by brace.
                declined = True
        pos = i + 1
        if text[i] == "{":
            opened.append(i)
        elif opened:
            begin = opened.pop()
            if _has_key(keys, begin, i + 1):
                closed.append((begin, i + 1))
    spans: list[tuple[int, int]] = []
    for begin, finish in sorted(closed, key=lambda span: (span[0], -span[1])):
        if not spans or begin >= spans[-1][1]:
            spans.append((begin, finish))
    after = spans[-1][1] if spans else 0
    for begin in opened:
        # A truncated object: the first unclosed "{" after the last whole one that opens with a key.
        if (
            begin >= after
            and text[begin + 1 : begin + 40].lstrip().startswith('"')
            and _has_key(keys, begin, len(text))
        ):
            spans.append((begin, len(text)))
            break
    return spans


_OBJECTS = json.JSONDecoder()


def _valid_object_end(text: str, start: int) -> int | None:
    """Return the end of the JSON object at text[start] where it is valid JSON, else None: one pass of json's C scanner.

    Valid JSON tells its strings and escapes as `_JSON_NEXT_BRACE` does, so its
    end is the brace that scan would close it at, found without a regex step
    per string (a bench notification's spans in half the instructions; docs/performance-log.md, extract10).
    """
    try:
        return _OBJECTS.raw_decode(text, start)[1]
    except (ValueError, RecursionError):
        return None


def _occurrences(text: str, word: str) -> list[int]:
    """Return where `word` starts in `text`, left to right, not overlapping (what finditer finds), by str.find."""
    found: list[int] = []
    at = text.find(word)
    while at >= 0:
        found.append(at)
        at = text.find(word, at + len(word))
    return found


def _has_key(keys: list[int], start: int, end: int) -> bool:
    """Say whether a notification key occurs in text[start:end] (keys: sorted positions)."""
    k = bisect.bisect_left(keys, start)
    return k < len(keys) and keys[k] < end


def is_whole_document(text: str) -> bool:
    """Say whether a part is nothing but one document (it may still be malformed)."""
    head = text.lstrip("\ufeff \t\r\n")[:512]
    if head.startswith("{"):
        return any(k in text for k in _JSON_KEYS)
    return bool(head.startswith("<") and _XML_START.match(head)) and head[:5].lower() != "<html"


def _utf8_document(text: str) -> bytes:
    """Encode an already-decoded XML text as UTF-8, dropping its now-wrong encoding declaration."""
    if text.startswith("<?xml"):
        end = text.find("?>", 0, 512)
        if end > 0:  # only the declaration itself is rewritten, never searched past
            text = _XML_ENCODING.sub(r"\1", text[:end], count=1) + text[end:]
    return text.encode("utf-8", "replace")
