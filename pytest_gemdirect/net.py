"""What both HTTP clients (ComfyUI, the LLM) share: naming a connection error, server URLs,
sessions that keep loopback traffic off proxies, reading an answer's body within its deadline
and size cap, and short printable excerpts of untrusted text.

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
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.text import visible

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
EXCERPT_CHARS = 300
MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 64 * MIB
MAX_RESPONSE_SETTING = "max_response_mb"
READ_CHUNK = 16 * 1024  # a read returns as soon as any bytes are there, at most this many


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


# ---------------------------------------------------------------------------------------- bodies
def cap_text(max_bytes: int) -> str:
    """The size cap in the words of its setting: ``64 MiB (max_response_mb, --max-response-mb)``."""
    size = f"{max_bytes / MIB:g} MiB" if max_bytes >= MIB else f"{max_bytes} bytes"
    return f"{size} ({MAX_RESPONSE_SETTING}, --max-response-mb)"


class BodyTooLarge(Exception):
    """An answer larger than the size cap; ``declared`` is its Content-Length when it sent one."""

    def __init__(self, max_bytes: int, received: int, declared: int | None) -> None:
        self.max_bytes = max_bytes
        self.received = received
        self.declared = declared
        size = f"declares {declared} bytes" if declared is not None else f"ran past {received} bytes"
        super().__init__(f"the answer {size}, more than the cap of {cap_text(max_bytes)}")


class BodyTooSlow(Exception):
    """The deadline passed while the body was still arriving; ``received`` bytes had come."""

    def __init__(self, deadline: Deadline, received: int) -> None:
        self.deadline = deadline
        self.received = received
        bound = f" ({deadline.setting} = {deadline.seconds:g} s)" if deadline.setting else ""
        super().__init__(
            f"the body was still arriving when the deadline of {deadline.seconds:g} s{bound} passed"
            f" ({received} bytes received)"
        )


def _declared_length(response: requests.Response) -> int | None:
    try:
        return int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """The socket timeout of the next read (urllib3 keeps the connection on the raw response)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _read_some(raw: Any) -> bytes:
    """What is there now, up to READ_CHUNK (urllib3 2); small blocking reads with urllib3 1."""
    read1 = getattr(raw, "read1", None)
    data = read1(READ_CHUNK) if read1 is not None else raw.read(1024)
    return bytes(data or b"")


class BodyFilter(Protocol):
    """Turns a body's bytes, as they arrive, into what is kept of them (e.g. long JSON strings cut)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes: ...


def read_body(
    response: requests.Response,
    deadline: Deadline,
    *,
    max_bytes: int,
    read_cap_s: float,
    keep: BodyFilter | None = None,
) -> bytes:
    """The whole body of a ``stream=True`` response, ended at ``deadline`` however slowly it comes.

    Every read returns as soon as some bytes are there (at most :data:`READ_CHUNK`), with a
    socket timeout of what is left of the deadline (at most ``read_cap_s``), and the deadline is
    checked after each: a body trickling in a byte at a time ends at the deadline, not when a
    large buffer fills. More than ``max_bytes`` raises :class:`BodyTooLarge` (before reading
    when Content-Length says so); the deadline passing raises :class:`BodyTooSlow`. Other
    failures of the connection are raised as ``requests.ConnectionError`` for the caller to name.
    With ``keep``, each piece goes through it as it comes and only its output is held; the cap
    counts the bytes received.
    """
    declared = _declared_length(response)
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(max_bytes, 0, declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        timeout = deadline.timeout(cap=read_cap_s)
        if timeout <= 0:
            raise BodyTooSlow(deadline, size)
        _set_read_timeout(response, timeout)
        try:
            chunk = _read_some(response.raw)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired():
                raise BodyTooSlow(deadline, size) from None
            raise requests.ConnectionError(exc) from None
        if not chunk:
            if keep is not None:
                chunks.append(keep.end())
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(max_bytes, size, declared)
        chunks.append(chunk if keep is None else keep.feed(chunk))


# ---------------------------------------------------------------------------------------- untrusted text
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
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_RESPONSE_SETTING",
    "BodyTooLarge",
    "BodyTooSlow",
    "BodyFilter",
    "cap_text",
    "read_body",
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
