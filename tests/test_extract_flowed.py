"""unflow undoes RFC 3676 format=flowed: soft breaks, DelSp, space-stuffing, quote depth, signature."""

from __future__ import annotations

from mailhook.extract.flowed import unflow


def test_soft_breaks_are_joined_keeping_the_space_with_delsp_no() -> None:
    text = "Message: This is a long reply that \r\nthe phone sent and the mail \r\nclient wrapped.\r\nNext: 1\r\n"
    assert unflow(text, delsp=False) == (
        "Message: This is a long reply that the phone sent and the mail client wrapped.\nNext: 1\n"
    )


def test_delsp_yes_removes_the_space_the_wrapping_added() -> None:
    text = "Message: see https://example.com/reser \r\nvations/42 and the  \r\nrest\r\n"
    assert unflow(text, delsp=True) == "Message: see https://example.com/reservations/42 and the rest\n"


def test_space_stuffing_is_removed() -> None:
    assert unflow(" From the desk\n  indented\n >not a quote\n", delsp=False) == (
        "From the desk\n indented\n>not a quote\n"
    )


def test_quoted_paragraphs_join_only_at_the_same_depth() -> None:
    text = "> Message: one \n> two \n>> three \n>> four\n> five \nsix\n"
    assert unflow(text, delsp=False) == "> Message: one two \n>> three four\n> five \nsix\n"


def test_the_signature_separator_is_never_flowed() -> None:
    text = "Message: a \nb\n-- \nOps Person \non call\n"
    assert unflow(text, delsp=False) == "Message: a b\n-- \nOps Person on call\n"
    assert unflow("> -- \n> sig\n", delsp=True) == "> -- \n> sig\n"


def test_a_flowed_last_line_is_kept_as_it_is() -> None:
    assert unflow("Message: end \n", delsp=False) == "Message: end \n"
    assert unflow("Message: end ", delsp=False) == "Message: end "


def test_fixed_lines_and_blank_lines_are_kept() -> None:
    text = "Text ID: 1\n\nMessage: hi\n"
    assert unflow(text, delsp=False) == text
