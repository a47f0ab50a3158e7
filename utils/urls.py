"""URLs given as `data`: which strings are URLs, and the same URL with its credentials hidden.

A private link can carry a password (`https://user:pass@host/faces.zip`) or a token (`?token=...`). Every message
that names `config.data`, and every file that stores it (config.json, the checkpoint), goes through `redact_url`,
so a secret never ends up in a log or in a run folder shared with others.
"""

from __future__ import annotations

import re
import urllib.parse


def is_url(data: str) -> bool:
    return data.startswith(("http://", "https://"))


_SECRET_NAME = re.compile(r"token|key|sig|secret|pass|pwd|auth|cred|session", re.IGNORECASE)


def redact_url(data: str) -> str:
    """`data` with a URL's credentials replaced by ***: its user:password@ and the values of query parameters
    whose names say they are secret (token, key, signature, X-Amz-Credential, ...); anything else as it is.

    For every message that names config.data and every file that stores it (config.json, the checkpoint):
    a private link's token must not end up in a log, or in a run folder shared with others.
    """
    if not is_url(data):
        return data
    try:
        parts = urllib.parse.urlsplit(data)
    except ValueError:   # e.g. an unclosed [ in the host: show the scheme only
        return f"{data.split(':', 1)[0]}://***"
    netloc = parts.netloc if "@" not in parts.netloc else "***@" + parts.netloc.rpartition("@")[2]
    pairs = [pair.partition("=") for pair in parts.query.split("&")] if parts.query else []
    query = "&".join(name + equals + ("***" if equals and _SECRET_NAME.search(urllib.parse.unquote(name)) else value)
                     for name, equals, value in pairs)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
