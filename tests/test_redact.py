"""Passwords never leave the process: storage URLs shown without them, whoever echoes them (hpsearch, a driver)."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from hpsearch.storage.redact import redact, scrub

from helpers import run

SECRET = "s3cr3t/Pa55?!"  # characters that URLs percent-encode
REFUSED = "127.0.0.1:1"  # nothing listens on port 1: the driver fails at once
# Every way SQLAlchemy takes a password: userinfo (an '@' in it, an '@' in the user name, percent-encoded),
# and query parameters password / passwd / pwd in any case.
PASSWORD_URLS = [
    f"postgresql://me:{quote(SECRET, safe='')}@{REFUSED}/db",
    f"postgresql://me:p@{quote(SECRET, safe='')}@{REFUSED}/db",
    f"postgresql://me:{SECRET.replace('/', '').replace('?', '')}@{REFUSED}/db",
    f"postgresql://me@corp:{quote(SECRET, safe='')}@{REFUSED}/db",
    f"postgresql://{REFUSED}/db?user=me&password={quote(SECRET, safe='')}",
    f"postgresql://{REFUSED}/db?user=me&Passwd={quote(SECRET, safe='')}&sslmode=disable",
    f"postgresql+psycopg2://{REFUSED}/db?PWD={quote(SECRET, safe='')}",
]


def _forms(url: str) -> list[str]:
    """The secret of a URL as written there and as a driver would echo it (decoded), at least 4 characters."""
    from urllib.parse import unquote

    return [f for f in {quote(SECRET, safe=""), SECRET, SECRET.replace("/", "").replace("?", "")} if f in url or
            f in unquote(url)]


def test_redact_hides_every_password_form_and_keeps_the_rest():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me:p@ss@db/x?user=a@b") == "postgresql://me:***@db/x?user=a@b"
    assert redact("postgresql://db/x?user=me&PASSWORD=s3cret&sslmode=require") == "postgresql://db/x?user=me&PASSWORD=***&sslmode=require"
    assert redact("sqlite:///x@y.db") == "sqlite:///x@y.db"
    assert redact("postgresql://db:5432/x") == "postgresql://db:5432/x"
    for url in PASSWORD_URLS:
        assert _forms(url) and not any(form in redact(url) for form in _forms(url)), url


@pytest.mark.parametrize("url", PASSWORD_URLS)
def test_a_password_never_leaves_the_process(workdir, url):
    """Not in hpsearch's line, not in the driver's message it quotes, not echoed decoded or encoded."""
    from urllib.parse import unquote

    for args in (["grid", "--epochs", "1", "--storage", url], ["report", "--storage", url], ["report", "x"]):
        result = run(*args, env={"HPSEARCH_STORAGE": url} if "--storage" not in args else {})
        assert result.exit_code in (1, 2) and result.stderr.count("\n") == 1, result.output
        assert not any(form in result.output for form in _forms(url)), result.output
    # a driver that echoes the password, decoded or not, is scrubbed too
    echo = f"driver: bad password '{unquote(url.rsplit('=', 1)[-1])}' in {url}"
    assert not any(form in scrub(echo, [url]) for form in _forms(url))
