"""URLs given as `data`: which strings are URLs, and any text with the credentials it holds hidden.

A private link can carry a password (`https://user:pass@host/faces.zip`) or a token (`?token=...`, `#key=...`).
Every error (utils/errors.py), every log line of training and every file that stores `config.data` (config.json,
the checkpoint) goes through `redact`, so a secret never ends up on a screen, in a log or in a shared run folder.
"""

from __future__ import annotations

import re
import urllib.parse


def is_url(data: str) -> bool:
    return data.startswith(("http://", "https://"))


_SECRET_NAME = r"[\w.%-]*(?:token|key|sig|secret|pass|pwd|auth|cred|session)[\w.%-]*"
_SECRET_PAIR = re.compile(rf"({_SECRET_NAME}=)[^&#\s'\"]+", re.IGNORECASE)      # token=abc, X-Amz-Credential=...
_USER_INFO = re.compile(r"(https?://)[^/?#\s'\"]*@", re.IGNORECASE)                  # https://user:pass@


def redact(text: str) -> str:
    """`text` with every URL's user:password@ and the value of every name=value whose name says it is secret
    (token, key, signature, X-Amz-Credential, ...) replaced by ***, wherever they stand: in a URL, in a URL cut
    at a space by another library's message, in a query or a fragment. Anything else is left as it is."""
    return _SECRET_PAIR.sub(r"\1***", _USER_INFO.sub(r"\1***@", text))


def redact_url(data: str) -> str:
    """`redact` for `config.data` when it is a URL (a folder's name is kept as it is): what every message naming it
    and every file storing it holds."""
    return redact(data) if is_url(data) else data
