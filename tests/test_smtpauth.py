"""STARTTLS and AUTH on the SMTP door, and the hashed password file behind AUTH."""

from __future__ import annotations

import base64
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import StartServer
from outside import Certificate
from smtp_support import client, notification, rows

from mailhook.errors import ConfigError
from mailhook.server import Runtime
from mailhook.smtpauth import PasswordFile, check_password, hash_password

FAST = 1000  # PBKDF2 iterations for test hashes; the file records them, so verification matches


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-passwords"
    path.write_text(
        "# mailhook SMTP AUTH accounts\n\n"
        f"callfire:{hash_password('correct horse', iterations=FAST)}\n"
        f"relay:{hash_password('pässwörd', iterations=FAST)}\n",
        encoding="utf-8",
    )
    return path


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_hashes_verify_only_their_own_password_and_use_fresh_salts() -> None:
    first, second = hash_password("s3cret", iterations=FAST), hash_password("s3cret", iterations=FAST)
    assert first != second
    assert check_password("s3cret", first) and check_password("s3cret", second)
    assert not check_password("s3cret ", first)
    assert not check_password("S3cret", second)


def test_password_file_checks_users_and_passwords(password_file: Path) -> None:
    passwords = PasswordFile.load(password_file)
    assert passwords.verify("callfire", "correct horse")
    assert passwords.verify("relay", "pässwörd")
    assert not passwords.verify("callfire", "pässwörd")
    assert not passwords.verify("nobody", "correct horse")


def test_password_file_errors_name_the_line_but_never_its_content(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    path.write_text(f"ok:{hash_password('x', iterations=FAST)}\nbob:plaintext-secret\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2") as error:
        PasswordFile.load(path)
    assert "plaintext-secret" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot read"):
        PasswordFile.load(tmp_path / "missing")


def test_smtp_password_command_prints_a_line_the_password_file_accepts(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mailhook", "smtp-password", "alice"], input="wonderland\n",
                          capture_output=True, text=True, check=True)
    path = tmp_path / "passwords"
    path.write_text(done.stdout, encoding="utf-8")
    assert done.stdout.startswith("alice:pbkdf2_sha256$")
    assert PasswordFile.load(path).verify("alice", "wonderland")


def test_starttls_is_offered_and_mail_sent_over_it_is_stored(
    start_server: StartServer, certificate: Certificate
) -> None:
    cert, key = certificate.cert, certificate.key
    runtime = start_server(smtp={"tls_cert": cert, "tls_key": key})
    with client(runtime) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=_unverified())
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")  # no password file: nothing to offer
        smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(1))
    assert rows(runtime.settings.storage.db, "SELECT count(*) FROM events") == [(1,)]  # type: ignore[arg-type]


def test_require_starttls_refuses_mail_before_tls(start_server: StartServer, certificate: Certificate) -> None:
    cert, key = certificate.cert, certificate.key
    runtime = start_server(smtp={"tls_cert": cert, "tls_key": key, "require_starttls": True})
    with client(runtime) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@callfire.com")[0] == 530
        smtp.starttls(context=_unverified())
        smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(2))
    assert rows(runtime.settings.storage.db, "SELECT count(*) FROM deliveries") == [(1,)]  # type: ignore[arg-type]


def _auth_server(start_server: StartServer, certificate: Certificate, password_file: Path) -> Runtime:
    cert, key = certificate.cert, certificate.key
    return start_server(smtp={"tls_cert": cert, "tls_key": key, "auth_file": password_file})


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_over_tls_with_the_right_password_lets_mail_through(
    start_server: StartServer, certificate: Certificate, password_file: Path, mechanism: str
) -> None:
    runtime = _auth_server(start_server, certificate, password_file)
    with client(runtime) as smtp:
        smtp.starttls(context=_unverified())
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        smtp.user, smtp.password = "callfire", "correct horse"
        code, _ = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
        assert code == 235
        smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(3))
    assert rows(runtime.settings.storage.db, "SELECT count(*) FROM deliveries") == [(1,)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("user", "password"), [("callfire", "wrong"), ("nobody", "correct horse")])
def test_wrong_credentials_get_535_and_mail_stays_refused(
    start_server: StartServer, certificate: Certificate, password_file: Path, user: str, password: str
) -> None:
    runtime = _auth_server(start_server, certificate, password_file)
    with client(runtime) as smtp:
        smtp.starttls(context=_unverified())
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(user, password)
        assert refused.value.smtp_code == 535
        assert smtp.mail("a@callfire.com")[0] == 530
    assert rows(runtime.settings.storage.db, "SELECT count(*) FROM deliveries") == [(0,)]  # type: ignore[arg-type]


def test_auth_is_neither_offered_nor_accepted_before_tls(
    start_server: StartServer, certificate: Certificate, password_file: Path
) -> None:
    runtime = _auth_server(start_server, certificate, password_file)
    with client(runtime) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN AGNhbGxmaXJlAGNvcnJlY3QgaG9yc2U=")[0] == 538
        assert smtp.mail("a@callfire.com")[0] == 530


def test_auth_without_tls_refuses_to_start(start_server: StartServer, password_file: Path) -> None:
    with pytest.raises(ConfigError, match="TLS"):
        start_server(smtp={"auth_file": password_file})


def test_auth_plain_takes_utf8_passwords(
    start_server: StartServer, certificate: Certificate, password_file: Path
) -> None:
    runtime = _auth_server(start_server, certificate, password_file)
    with client(runtime) as smtp:
        smtp.starttls(context=_unverified())
        smtp.ehlo()
        response = base64.b64encode("\0relay\0pässwörd".encode()).decode()
        assert smtp.docmd("AUTH", f"PLAIN {response}")[0] == 235
