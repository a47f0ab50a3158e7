"""`redact`, which every error, note, log line and stored `config.data` passes through: no password or token leaves."""

import re
import urllib.parse

_SECRET_WORD = re.compile(r"token|key|sig|secret|pass|pw|auth|cred|session|jwt|bearer", re.IGNORECASE)
_NAME, _VALUE = re.compile(r"([\w.%\[\]-]+)="), re.compile(r"[^&#;\s\"]+")   # token=, X-Amz-Credential=, auth[token]=
_USER_INFO = re.compile(r"([a-z][a-z0-9+.-]*:/+)[^/?#'\"\n]*@", re.IGNORECASE)   # https://user:pass@ (ftp:/ too)
_QUERY = re.compile(r"(https?://[^?#\s'\"]*)([?#][^\s\"]*)", re.IGNORECASE)   # a URL's query and fragment


def is_url(data: str) -> bool:
    return data[:8].lower().startswith(("http://", "https://"))   # as urllib reads the scheme: HTTP:// too


def parses(url: str) -> bool:
    """Whether urllib reads the URL's host and port (it raises a bare ValueError for "http://[::1/x.zip") and the URL
    holds no space or control character (http.client refuses those, quoting the URL where no pattern finds it)."""
    try:
        return not re.search(r"[\x00-\x20\x7f]", url) and (urllib.parse.urlsplit(url).port is not None or True)
    except ValueError:
        return False


def redact(text: str) -> str:
    """`text` with every URL's user:password@ and query values, and the value of every secret-named name=value (its
    name read as a server decodes it: to%6Ben is token) replaced by ***."""
    text = _QUERY.sub(lambda url: url[1] + re.sub(r"=[^&;#]*", "=***", url[2]), _USER_INFO.sub(r"\1***@", text))
    kept, end = [], 0
    for name in _NAME.finditer(text):   # every name=, also one inside another's value (data=https://...?token=...)
        value = _VALUE.match(text, name.end())
        if name.start() >= end and value and _SECRET_WORD.search(urllib.parse.unquote(name[1])):
            kept += [text[end:name.end()], "***"]
            end = value.end()
    return "".join(kept) + text[end:]


def redact_url(data: str) -> str:
    """`redact` for `config.data` when it is a URL (a folder's name is kept as it is)."""
    return redact(data) if is_url(data) else data
