"""Bodies in every charset the standards allow, POSTed through a running server with their Content-Type.

(The HTTP door's charset cases, beside tests/test_http_door.py whose server fixtures they use.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_http_door import SECRET, StartWebhook, start_webhook  # noqa: F401 - start_webhook is a fixture

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def http_fixtures() -> list[Path]:
    """Every body in fixtures/http, each with an expected file that names its Content-Type."""
    return sorted(p for p in (FIXTURES / "http").iterdir() if ".expected" not in p.name)


def _expected(sample: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(sample.with_name(sample.stem + ".expected.json").read_text("utf-8"))
    return loaded


@pytest.mark.parametrize("sample", http_fixtures(), ids=lambda p: p.name)
def test_each_charset_fixture_posted_with_its_content_type_stores_its_text_exactly(
    start_webhook: StartWebhook, sample: Path  # noqa: F811 - the fixture imported above
) -> None:
    expected = _expected(sample)
    content_type = expected.get("content_type")
    webhook = start_webhook()
    body = sample.read_bytes()
    headers = {"Content-Type": str(content_type)} if content_type else {"Content-Type": ""}

    response = webhook.post(body, headers=headers)

    answer = response.json()
    stored = webhook.rows("SELECT raw, status, error, notes FROM deliveries WHERE id = ?", answer["delivery_id"])
    assert stored[0][0] == body
    events = webhook.rows(
        "SELECT dedupe_key, message, from_number, to_number FROM events WHERE delivery_id = ? ORDER BY id",
        answer["delivery_id"],
    )
    want = expected["events"]
    assert isinstance(want, list)
    if want:
        assert response.status_code == 200, answer
        assert events == [(e["dedupe_key"], e["message"], e["from_number"], e["to_number"]) for e in want]
        for note in expected["notes"]:  # type: ignore[attr-defined]
            assert note in (stored[0][3] or "")
    else:
        assert response.status_code == 422, answer
        assert str(expected["quarantined"]) in answer["error"]
        assert stored[0][1:3] == ("quarantined", answer["error"])


def test_curl_posting_utf16_json_with_its_charset_stores_the_message(start_webhook: StartWebhook) -> None:  # noqa: F811
    webhook = start_webhook()
    sample = FIXTURES / "http" / "json-utf16le-no-bom-declared-utf16.json"

    code, answer = webhook.curl("-H", "Content-Type: application/json; charset=utf-16", "--data-binary", f"@{sample}")

    assert code == 200, answer
    assert answer["events"] == 1
    message = webhook.rows("SELECT message FROM events WHERE delivery_id = ?", answer["delivery_id"])[0][0]
    assert message == _expected(sample)["events"][0]["message"]  # type: ignore[index]


def test_an_unsigned_v1_body_in_utf16_is_stored_when_a_webhook_secret_is_set(
    start_webhook: StartWebhook,  # noqa: F811
) -> None:
    webhook = start_webhook(http={"webhook_secret": SECRET})
    for name, content_type in (("json-utf16le-no-bom-declared-utf16.json", "application/json; charset=utf-16"),
                               ("json-utf32be-no-bom-undeclared.json", "application/json"),
                               ("xml-utf16be-bom-prolog.xml", "application/xml")):
        response = webhook.post((FIXTURES / "http" / name).read_bytes(), headers={"Content-Type": content_type})
        assert response.status_code == 200, (name, response.text)


def test_reprocess_reads_a_stored_body_in_its_declared_charset_again(start_webhook: StartWebhook) -> None:  # noqa: F811
    from mailhook.reprocess import reprocess
    from mailhook.store.write import Store

    webhook = start_webhook()
    sample = FIXTURES / "http" / "json-latin1-declared.json"
    answer = webhook.post(sample.read_bytes(), headers={"Content-Type": "application/json; charset=ISO-8859-1"}).json()
    assert answer["status"] == "stored"
    store = Store(webhook.db)
    try:
        receipts = reprocess(store, {}, quarantined_only=False)
    finally:
        store.close()
    # Read without its Content-Type, the body would be quarantined as "JSON is not valid UTF-8".
    assert [(r.delivery_id, r.status, r.error) for r in receipts] == [(answer["delivery_id"], "stored", None)]
