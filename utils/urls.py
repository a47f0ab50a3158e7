"""`redact`, which every error, note, log line and stored `config.data` passes through: no password or token leaves."""

import re
import urllib.parse

_SECRET_NAME = r"[\w.%-]*(?:token|key|sig|secret|pass|pwd|auth|cred|session)[\w.%-]*"
_SECRET_PAIR = re.compile(rf"({_SECRET_NAME}=)[^&#\s'\"]+", re.IGNORECASE)   # token=abc, X-Amz-Credential=...
_USER_INFO = re.compile(r"(https?://)[^/?#\s'\"]*@", re.IGNORECASE)           # https://user:pass@


def is_url(data: str) -> bool:
    return data.startswith(("http://", "https://"))


def parses(url: str) -> bool:
    """Whether urllib reads the URL's host and port (it raises a bare ValueError for "http://[::1/x.zip")."""
    try:
        return urllib.parse.urlsplit(url).port is not None or True
    except ValueError:
        return False


def redact(text: str) -> str:
    """`text` with every URL's user:password@ and the value of every secret-named name=value replaced by ***."""
    return _SECRET_PAIR.sub(r"\1***", _USER_INFO.sub(r"\1***@", text))


def redact_url(data: str) -> str:
    """`redact` for `config.data` when it is a URL (a folder's name is kept as it is)."""
    return redact(data) if is_url(data) else data
