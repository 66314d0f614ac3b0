"""STARTTLS and AUTH on the SMTP door, and the hashed password file behind AUTH."""

from __future__ import annotations

import base64
import contextlib
import logging
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import StartServer
from outside import Certificate
from process_support import wait_until
from smtp_support import client, notification, rows

from mailhook.errors import ConfigError
from mailhook.server import Runtime
from mailhook.smtp.auth import PasswordFile, check_password, hash_password

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


def _limited_auth_server(
    start_server: StartServer, certificate: Certificate, password_file: Path, **smtp: object
) -> Runtime:
    cert, key = certificate.cert, certificate.key
    return start_server(smtp={"tls_cert": cert, "tls_key": key, "auth_file": password_file, **smtp})


def _tls_client(runtime: Runtime, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = client(runtime, source_address=(source, 0))
    smtp.starttls(context=_unverified())
    smtp.ehlo()
    return smtp


def _plain(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _timed_failure(smtp: smtplib.SMTP) -> float:
    """Send one wrong password; return how long its 535 took."""
    started = time.monotonic()
    code, _ = smtp.docmd("AUTH", _plain("callfire", "wrong"))
    assert code == 535
    return time.monotonic() - started


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_every_auth_failure_is_logged_with_peer_mechanism_and_user_never_the_password(
    start_server: StartServer, certificate: Certificate, password_file: Path, mechanism: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")
    runtime = _limited_auth_server(start_server, certificate, password_file, auth_failure_delay=0.0)
    with _tls_client(runtime) as smtp:
        for user in ("callfire", "nobody\r\nINFO fake"):
            if mechanism == "PLAIN":
                code, _ = smtp.docmd("AUTH", _plain(user, "s3cret-guess"))
            else:
                assert smtp.docmd("AUTH", "LOGIN " + base64.b64encode(user.encode()).decode())[0] == 334
                code, _ = smtp.docmd(base64.b64encode(b"s3cret-guess").decode())
            assert code == 535
    failures = [r for r in caplog.records if r.name == "mailhook.smtp" and r.getMessage().startswith("auth failed")]
    assert [(r.args[0], r.args[1], r.args[2]) for r in failures] == [  # type: ignore[index]
        ("127.0.0.1", mechanism, "callfire"), ("127.0.0.1", mechanism, '"nobody\\r\\nINFO fake"')]
    assert all(r.levelno == logging.WARNING for r in failures)
    assert not any("s3cret-guess" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["stored", "received"])
def test_auth_failures_on_one_connection_get_535_up_to_the_limit_then_421_and_the_connection_closes(
    start_server: StartServer, certificate: Certificate, password_file: Path, mode: str
) -> None:
    runtime = _limited_auth_server(start_server, certificate, password_file, acknowledge=mode,
                                   max_auth_failures=3, auth_failure_delay=0.0)
    with _tls_client(runtime) as smtp:
        assert [smtp.docmd("AUTH", _plain("callfire", f"guess{i}"))[0] for i in range(3)] == [535] * 3
        assert smtp.noop() == (421, b"4.7.0 Too many authentication failures, closing connection")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
    with _tls_client(runtime) as smtp:  # the right password, from the same address, is still let in
        assert smtp.docmd("AUTH", _plain("callfire", "correct horse"))[0] == 235
        smtp.sendmail("a@callfire.com", ["ops@example.com"], notification(9))
    db = runtime.settings.storage.db
    assert db is not None
    wait_until(lambda: rows(db, "SELECT count(*) FROM events") == [(1,)], 30, "the legitimate message stored")


def test_failed_auth_waits_grow_per_address_without_holding_up_other_sessions(
    start_server: StartServer, certificate: Certificate, password_file: Path
) -> None:
    runtime = _limited_auth_server(start_server, certificate, password_file, max_auth_failures=10,
                                   auth_failure_delay=0.5, auth_failure_delay_max=2.0)
    other = _tls_client(runtime, "127.0.0.2")
    with _tls_client(runtime) as smtp:
        assert [_timed_failure(smtp) >= wait for wait in (0.5, 1.0, 2.0)] == [True] * 3
        # The fourth waits the longest delay, not more; meanwhile another session is answered at once.
        waited: list[float] = []
        attacker = threading.Thread(target=lambda: waited.append(_timed_failure(smtp)))
        attacker.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert other.noop()[0] == 250
        assert time.monotonic() - started < 1.2
        attacker.join(timeout=30)
        assert 2.0 <= waited[0] < 4.0
    with _tls_client(runtime) as smtp:  # a new connection from the same address starts at the longest delay
        assert _timed_failure(smtp) >= 2.0
        assert smtp.docmd("AUTH", _plain("callfire", "correct horse"))[0] == 235
    with _tls_client(runtime) as smtp:  # success forgave the address
        assert _timed_failure(smtp) < 1.5
    assert _timed_failure(other) < 1.5  # another address has its own count
    other.quit()


def test_parallel_wrong_guesses_from_one_address_do_not_delay_a_login_from_another(
    start_server: StartServer, certificate: Certificate, tmp_path: Path
) -> None:
    # Real-cost hashes here: the attack is about the CPU each check takes.
    started = time.monotonic()
    path = tmp_path / "smtp-passwords"
    path.write_text(f"callfire:{hash_password('correct horse')}\n", encoding="utf-8")
    one_check = time.monotonic() - started
    runtime = _limited_auth_server(start_server, certificate, path, max_auth_failures=10, auth_failure_delay=0.1,
                                   auth_failure_delay_max=0.5)
    guessers = [_tls_client(runtime, "127.0.0.2") for _ in range(30)]
    legit, other = _tls_client(runtime), _tls_client(runtime, "127.0.0.3")
    go = threading.Barrier(len(guessers) + 1)

    def guess(smtp: smtplib.SMTP) -> None:
        go.wait()
        with contextlib.suppress(smtplib.SMTPException):
            smtp.docmd("AUTH", _plain("callfire", "wrong"))

    threads = [threading.Thread(target=guess, args=(smtp,), daemon=True) for smtp in guessers]
    for thread in threads:
        thread.start()
    go.wait()
    time.sleep(0.3)  # every guess is in; before, each one's check was queued ahead of the login below
    started = time.monotonic()
    assert other.noop()[0] == 250
    noop = time.monotonic() - started
    started = time.monotonic()
    assert legit.docmd("AUTH", _plain("callfire", "correct horse"))[0] == 235
    login = time.monotonic() - started
    legit.sendmail("a@callfire.com", ["ops@example.com"], notification(11))
    # Before: 30 checks at ~one_check of CPU each, on every core, ahead of it (>= 15 x one_check on 2 cores).
    print(f"login {login:.2f} s, one check {one_check:.2f} s")
    assert login < 1.0 + 5 * one_check, (login, one_check)
    assert noop < 1.0, noop
    for thread in threads:
        thread.join(timeout=120)
    for smtp in [legit, other, *guessers]:
        smtp.close()
