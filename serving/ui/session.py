"""Sessions and CSRF tokens of the rep pages, signed with HMAC (stdlib only).

The API key is exchanged once for a session cookie (HttpOnly, SameSite=Strict): tiers are
internal, so no page is shown without one. The signing secret is derived from the API key, so
every worker of the service (and a restarted one) accepts the same sessions, and changing the
key signs everyone out. Forms carry a CSRF token bound to the session (signed in) or to a
short-lived pre-session cookie (the sign-in form itself).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

SESSION_COOKIE = "tiering_session"
LOGIN_CSRF_COOKIE = "tiering_login_csrf"
SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Session:
    user: str
    session_id: str
    expires: int


class Signer:
    def __init__(self, api_key: str | None) -> None:
        # Without a key (loopback-only service) sessions live as long as this process.
        material = api_key.encode("utf-8") if api_key else secrets.token_bytes(32)
        self.secret = hmac.new(material, b"tiering-ui-session-v1", hashlib.sha256).digest()
        self.api_key = api_key

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self.secret, payload, hashlib.sha256).hexdigest()

    def key_matches(self, given: str) -> bool:
        if self.api_key is None:
            return True
        return hmac.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8"))

    def new_session(self, user: str, now: float | None = None) -> str:
        body = {
            "u": user,
            "sid": secrets.token_hex(16),
            "exp": int((now or time.time()) + SESSION_SECONDS),
        }
        payload = base64.urlsafe_b64encode(json.dumps(body).encode("utf-8"))
        return f"{payload.decode('ascii')}.{self._mac(payload)}"

    def read_session(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(payload.encode("ascii", "replace"))):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
            session = Session(
                user=str(body["u"]), session_id=str(body["sid"]), expires=int(body["exp"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < (now or time.time()):
            return None
        return session

    def csrf_for(self, session: Session) -> str:
        return self._mac(f"csrf:{session.session_id}".encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_for(session))

    @staticmethod
    def new_login_token() -> str:
        return secrets.token_hex(16)
