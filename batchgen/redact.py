"""What batchgen records never holds a secret, nor a server's control characters.

Secrets are registered where they are read (the API credentials, a storage option's
key or token, a URL's password); :func:`redact` takes every registered one, and its
Basic-auth encoding, out of a text.  It is applied to everything batchgen writes: log
lines (the terminal and ``--log-file``), what the command line prints (``--json``
included), the journal's errors and results lines (so ``results.jsonl`` too), and the
errors it raises from a server's words.  A server's text is also made :func:`printable`
at the HTTP boundary: an ANSI escape, a terminal's title sequence, a carriage return or
a line break that would forge a log line is shown escaped, never acted on.

Why a registry rather than patterns: a gateway that echoes the request's headers puts
the secret anywhere in its text, in any case and with any words around it; only the
value itself can be found reliably.
"""

from __future__ import annotations

import base64
import re
import threading
from urllib.parse import quote, unquote, urlsplit

# Shorter values are not taken for secrets (they would blank ordinary words).
MIN_SECRET = 6
SHOWN = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
# C0 and C1 control characters and DEL; a tab stays.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def register(*values: str | None) -> None:
    """Take these values (and how a URL or an HTTP header would spell them) for
    secrets from now on."""
    global _pattern
    forms = set()
    for value in values:
        if value and len(value) >= MIN_SECRET:
            forms.update({value, quote(value, safe=""), unquote(value)})
    forms = {form for form in forms if len(form) >= MIN_SECRET}
    if not forms - _secrets:
        return
    with _lock:
        _secrets.update(forms)
        ordered = sorted(_secrets, key=len, reverse=True)  # a longer one first
        _pattern = re.compile("|".join(map(re.escape, ordered)))


def register_credentials(key: str, secret: str) -> None:
    """The API's key and secret, and the Basic-auth token made of them."""
    token = base64.b64encode(f"{key}:{secret}".encode()).decode("ascii")
    register(key, secret, token)


def register_url(url: str) -> None:
    """A URL's password (``scheme://user:password@host``), if it holds one."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        register(parts.password, f"{parts.username}:{parts.password}")


def redact(text: str) -> str:
    """``text`` with every registered secret shown as ``***``."""
    pattern = _pattern
    return text if pattern is None else pattern.sub(SHOWN, text)


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with its control characters escaped (``\\x1b``, ``\\r``, ``\\n``): shown,
    never acted on by a terminal or taken for a new log line.  ``lines`` keeps line
    breaks (text of batchgen's own)."""
    control = _CONTROL_BUT_NEWLINE if lines else _CONTROL
    return control.sub(_escaped, text)


def clean(text: str) -> str:
    """A server's (or anyone's) text as batchgen records it: redacted, one line."""
    return printable(redact(text))


def _escaped(found: re.Match[str]) -> str:
    character = found.group(0)
    return {"\n": "\\n", "\r": "\\r"}.get(character, f"\\x{ord(character):02x}")


def forget_all() -> None:
    """Tests' switch: no secret known."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None
