"""What both HTTP clients (ComfyUI, the LLM) share: naming a connection error, server URLs,
sessions that keep loopback traffic off proxies, and short printable excerpts of untrusted text.

One vocabulary of connection errors (:data:`CONNECTION_KINDS`) is used by every client and by
whoever decides on retries (``story._FATAL_KINDS``): ``connection_refused`` (nothing listens),
``connection_reset`` (the server closed or reset the connection without an answer),
``timeout``, ``dns`` and ``connection`` (anything else). Nothing here imports pytest.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

REFUSED = "connection_refused"
RESET = "connection_reset"
TIMEOUT = "timeout"
DNS = "dns"
OTHER = "connection"
CONNECTION_KINDS: tuple[str, ...] = (REFUSED, RESET, TIMEOUT, DNS, OTHER)
"""What :func:`classify_connection_error` answers."""

_REFUSED_ERRNOS = {errno.ECONNREFUSED, 10061}  # 10061: WSAECONNREFUSED (Windows)
_RESET_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, 10053, 10054}  # WSAECONNABORTED/RESET
_TIMEOUT_NAMES = {"ReadTimeoutError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout", "timeout"}
_DNS_TEXTS = ("name or service not known", "getaddrinfo failed", "nodename nor servname")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
EXCERPT_CHARS = 300


# ---------------------------------------------------------------------------------------- errors
def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, urllib3 ``reason``, args)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop()
        if any(item is s for s in seen):
            continue
        seen.append(item)
        for nxt in (item.__cause__, item.__context__, getattr(item, "reason", None), *item.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return seen


def innermost(exc: BaseException) -> BaseException:
    """The deepest error ``exc`` wraps (the socket's own, usually)."""
    return error_chain(exc)[-1]


def _has_errno(item: BaseException, numbers: set[int]) -> bool:
    return isinstance(item, OSError) and item.errno in numbers


def classify_connection_error(exc: BaseException) -> str:
    """One of :data:`CONNECTION_KINDS` for a requests / urllib3 / websocket-client / socket error."""
    chain = error_chain(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, ConnectionRefusedError) or _has_errno(e, _REFUSED_ERRNOS) for e in chain):
        return REFUSED
    if "connection refused" in text or "actively refused" in text:
        return REFUSED
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in names:
        return DNS
    resets = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    if any(isinstance(e, resets) or _has_errno(e, _RESET_ERRNOS) for e in chain):
        return RESET
    if names & {"RemoteDisconnected", "ProtocolError"} or "connection aborted" in text:
        return RESET
    if names & _TIMEOUT_NAMES or any(isinstance(e, TimeoutError) for e in chain):
        return TIMEOUT
    if any(words in text for words in _DNS_TEXTS):
        return DNS
    return OTHER


# ---------------------------------------------------------------------------------------- URLs, sessions
def server_url(url: str) -> str:
    """The base URL of a server from what a user typed (``127.0.0.1:8188``, ``http://host:1234/``).

    ``http://`` is added when there is no scheme; it must then be http(s) with a host and a
    valid port, without a query or a fragment; trailing slashes go. Raises ValueError saying why.
    """
    text = (url or "").strip()
    if text and "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"cannot parse the URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL such as http://127.0.0.1:1234")
    if parts.query or parts.fragment:
        raise ValueError("the URL must not carry a query or a fragment")
    if port == 0:
        raise ValueError("port 0 is not a server port")
    return urlunsplit((parts.scheme, parts.netloc, re.sub(r"/+$", "", parts.path), "", ""))


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def is_loopback(host: str | None) -> bool:
    """``localhost``, ``127.x.x.x`` or ``::1``: a server on this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def json_session(base_url: str) -> requests.Session:
    """A pooled session asking for JSON; a loopback server is never reached through an
    ``HTTP(S)_PROXY`` from the environment."""
    session = requests.Session()
    session.trust_env = not is_loopback(urlsplit(base_url).hostname)
    session.headers["Accept"] = "application/json"
    return session


# ---------------------------------------------------------------------------------------- untrusted text
def visible(text: str) -> str:
    """Control characters (but newline and tab) shown as ``\\x1b`` escapes, so a terminal or a
    log line shows them instead of obeying them."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def excerpt(data: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of an untrusted body (bytes decoded leniently), control
    characters made visible, ``…`` when cut."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = visible(text.strip())
    return text if len(text) <= limit else text[:limit] + "…"


def one_line(text: Any, limit: int = 240) -> str:
    """``text`` on one line (whitespace runs collapsed), control characters visible, ``…`` when cut."""
    flat = visible(re.sub(r"\s+", " ", str(text or "")).strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


__all__ = [
    "CONNECTION_KINDS",
    "DNS",
    "OTHER",
    "REFUSED",
    "RESET",
    "TIMEOUT",
    "classify_connection_error",
    "error_chain",
    "excerpt",
    "innermost",
    "is_loopback",
    "json_session",
    "one_line",
    "redact_url",
    "server_url",
    "visible",
]
