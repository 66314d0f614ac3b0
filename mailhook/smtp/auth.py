"""STARTTLS and AUTH for the SMTP door: the TLS context, and hashed passwords checked by PLAIN and LOGIN.

The password file holds one `user:hash` line per account (blank lines and
`#` comments are ignored). Hashes are PBKDF2-SHA256 in Django's format,
`pbkdf2_sha256$ITERATIONS$SALT$BASE64`, made by `mailhook smtp-password USER`.
The door offers AUTH only after STARTTLS, so passwords never cross the wire
in the clear.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import hashlib
import hmac
import secrets
import ssl
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

from mailhook.errors import ConfigError
from mailhook.exitcodes import EX_DATAERR, EX_OK

SCHEME = "pbkdf2_sha256"
ITERATIONS = 600_000


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """Load the server certificate and key for STARTTLS; None when not configured."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"smtp.tls_cert/smtp.tls_key: cannot load {cert} and {key}: {exc}") from None
    return context


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: str | None = None) -> str:
    """Return the password-file hash of `password`, with a fresh random salt unless one is given."""
    salt = salt or secrets.token_urlsafe(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{SCHEME}${iterations}${salt}${base64.b64encode(digest).decode()}"


def check_password(password: str, encoded: str) -> bool:
    """Say whether `password` matches the hash `encoded`, comparing in constant time."""
    scheme, iterations, salt, _ = _split(encoded)
    if scheme != SCHEME:
        return False
    return hmac.compare_digest(hash_password(password, iterations=iterations, salt=salt), encoded)


def _split(encoded: str) -> tuple[str, int, str, str]:
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != SCHEME or not parts[1].isdigit() or not parts[2]:
        raise ValueError(f"not a {SCHEME}$ITERATIONS$SALT$HASH hash")
    return parts[0], int(parts[1]), parts[2], parts[3]


@dataclass(frozen=True, slots=True)
class PasswordFile:
    """The accounts allowed to AUTH: user name to password hash."""

    hashes: Mapping[str, str]

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        """Read a password file, naming the line of any entry that is not `user:hash`."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"smtp.auth_file: cannot read {path}: {exc}") from None
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, encoded = line.partition(":")
            try:
                if not sep or not user:
                    raise ValueError("expected user:hash")
                _split(encoded)
            except ValueError as exc:
                # The message names the line, never its content: it may hold a plain password.
                raise ConfigError(f"smtp.auth_file: {path} line {number}: {exc}") from None
            hashes[user] = encoded
        if not hashes:
            raise ConfigError(f"smtp.auth_file: {path} has no user:hash lines")
        return cls(hashes)

    def verify(self, user: str, password: str) -> bool:
        """Say whether `user` exists and `password` is theirs."""
        # An unknown user costs the same hashing work, so timing does not reveal which users exist.
        encoded = self.hashes.get(user) or hash_password("", salt="unknown-user")
        return check_password(password, encoded) and user in self.hashes


class AuthChecks:
    """Password checks, run in a few threads of their own: one at a time per address, `limit` at most in all.

    Each check is ~0.15 s of CPU (PBKDF2); without a bound, parallel guesses
    from one address would queue ahead of every other client's login. The
    event loop only awaits them, so it keeps serving other sessions meanwhile.
    """

    def __init__(self, limit: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="mailhook-auth")
        self.slots = asyncio.Semaphore(limit)
        self.per_peer: dict[str, tuple[asyncio.Lock, int]] = {}  # address -> (its lock, checks waiting or running)

    async def run(self, peer: str, check: Callable[[str, str], bool], user: str, password: str) -> bool:
        """Run `check(user, password)` in turn: after the address's earlier checks, within the overall limit."""
        lock, users = self.per_peer.get(peer) or (asyncio.Lock(), 0)
        self.per_peer[peer] = (lock, users + 1)
        try:
            async with lock, self.slots:
                return await asyncio.get_running_loop().run_in_executor(self.executor, check, user, password)
        finally:
            lock, users = self.per_peer[peer]
            if users <= 1:
                del self.per_peer[peer]
            else:
                self.per_peer[peer] = (lock, users - 1)

    def close(self) -> None:
        """Let the threads end once the checks running finish; drop those not started."""
        self.executor.shutdown(wait=False, cancel_futures=True)


class PasswordAuth:
    """PLAIN and LOGIN mechanisms for an aiosmtpd handler, hashing off the event loop."""

    passwords: PasswordFile | None = None

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        """Check `AUTH PLAIN [initial-response]` (RFC 4616)."""
        blob = await _response(server, args[1] if len(args) > 1 else None, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the PLAIN response")
            return AuthResult(success=False, handled=True)
        return await self._check(server, "PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        """Check `AUTH LOGIN [user]` with its user and password challenges."""
        user = await _response(server, args[1] if len(args) > 1 else None, "Username:")
        if user is None:
            return AuthResult(success=False, handled=True)
        password = await _response(server, None, "Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(server, "LOGIN", user, password)

    async def _check(self, server: Any, mechanism: str, user: bytes, password: bytes) -> AuthResult:
        """Verify a user and password; a failure is reported to the session (logged, delayed) before its 535."""
        ok = False
        try:
            name, secret = user.decode(), password.decode()
        except UnicodeDecodeError:
            name = user.decode("utf-8", "backslashreplace")
        else:
            if self.passwords is not None:
                ok = await server.check_password(self.passwords.verify, name, secret)
        if not ok:
            await server.failed_auth(mechanism, name)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user, password) if ok else None)


async def _response(server: Any, initial: str | None, challenge: str) -> bytes | None:
    """Return the client's decoded answer (the initial response, or one to `challenge`); None if it failed."""
    if initial is None:
        answer = await server.challenge_auth(challenge)
        return None if answer is MISSING else bytes(answer)
    if initial == "=":
        return b""
    try:
        return base64.b64decode(initial, validate=True)
    except ValueError:
        await server.push("501 5.5.2 Cannot decode base64")
        return None


def run_smtp_password(args: argparse.Namespace, settings: Any, env: Mapping[str, str]) -> int:
    """Print a password-file line for `args.user`; the password is read from the terminal or stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("mailhook: empty password", file=sys.stderr)
        return EX_DATAERR
    print(f"{args.user}:{hash_password(password)}")
    return EX_OK
