"""Passwords never leave the process: storage URLs shown without them, and any text scrubbed of them.

Light on purpose (no optuna, no sqlalchemy): the CLI scrubs every error line it prints.
"""
from __future__ import annotations

import re
from typing import Iterable

# Query parameters that carry a password to a driver (password, passwd, pwd, sslpassword, ...), any case.
_SECRET_PARAM = re.compile(r"[?&;]\w*(?:password|passwd|pwd)=([^&;]*)", re.IGNORECASE)
_seen: set[str] = set()  # every storage location this process was given: scrub() removes their secrets


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the passwords of a URL are: its userinfo's and its query's.

    SQLAlchemy ends the userinfo at the first '@' after the username (which has no ':' or '/');
    a person who wrote an '@' into the password meant the last '@' before the host. Both spans count.
    """
    spans = [m.span(1) for m in _SECRET_PARAM.finditer(url)]
    scheme = re.match(r"[\w+.-]+://", url)
    if scheme is None:
        return spans
    colon = url.find(":", scheme.end())
    first = url.find("@", colon)
    if colon < 0 or first < 0 or "/" in url[scheme.end():colon]:
        return spans
    query = url.find("?", first)
    last = url.rfind("@", first, query if query >= 0 else len(url))
    return spans + [(colon + 1, first), (colon + 1, last)]


def redact(url: str) -> str:
    """A storage URL without its passwords: postgresql://me:secret@host/db?password=x -> postgresql://me:***@host/db?password=***."""
    merged: list[list[int]] = []
    for start, end in sorted(_secret_spans(url)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(end, merged[-1][1])
        elif start < end:
            merged.append([start, end])
    for start, end in reversed(merged):
        url = url[:start] + "***" + url[end:]
    return url


def _secrets(url: str) -> set[str]:
    """A URL's passwords in every form a driver or a message may echo them: as written, percent-decoded."""
    from urllib.parse import unquote, unquote_plus

    written = {url[start:end] for start, end in _secret_spans(url)}
    return {form for secret in written for form in (secret, unquote(secret), unquote_plus(secret)) if form}


def scrub(text: str, urls: Iterable[str] = ()) -> str:
    """``text`` without any password of ``urls`` or of any storage this process opened (for every line that leaves it).

    A secret is cut where it stands alone (not inside a longer word), so a short password does not eat the message.
    """
    for url in {*urls, *_seen}:
        if "://" in url:
            text = text.replace(url, redact(url))
            for secret in sorted(_secrets(url), key=len, reverse=True):
                edge = r"(?<!\w)" if secret[0].isalnum() or secret[0] == "_" else ""
                end = r"(?!\w)" if secret[-1].isalnum() or secret[-1] == "_" else ""
                text = re.sub(edge + re.escape(secret) + end, "***", text)
    return text


def remember(location: str) -> None:
    """Note a storage location this process uses, so that scrub() removes its secrets from any text."""
    _seen.add(location)
