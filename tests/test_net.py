"""What both HTTP clients share (pytest_gemdirect.net, pytest_gemdirect.names), over real sockets
where it matters: one name for each way a connection fails, whichever client met it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pytest_gemdirect import net
from pytest_gemdirect.comfyui.client import ComfyClient, ServerGone
from pytest_gemdirect.llm import LLMClient, LLMError
from pytest_gemdirect.names import safe_file_name, slug
from pytest_gemdirect.story.from_llm import _FATAL_KINDS


# ---------------------------------------------------------------------------------------- servers
@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, read back, released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def hanging_up_server() -> Iterator[str]:
    """Accepts each connection, reads the request, closes without a byte of answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    thread.join(timeout=5)


def _error_of(call: Any) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the error is what is tested
        return exc
    raise AssertionError("no error")


# ---------------------------------------------------------------------------------------- classifier
def test_a_refused_connection_has_one_name_in_both_clients(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    raw = _error_of(lambda: requests.get(url + "/system_stats", timeout=5))
    assert net.classify_connection_error(raw) == net.REFUSED
    with LLMClient(url, timeout_s=5) as llm:
        error = _error_of(llm.list_models)
    assert isinstance(error, LLMError) and error.kind == net.REFUSED
    with ComfyClient(url) as comfy:
        assert isinstance(_error_of(comfy.system_stats), ServerGone)
    assert net.REFUSED in _FATAL_KINDS  # the story stage does not retry a server that is not there


def test_a_connection_closed_without_an_answer_is_a_reset_in_both_clients(hanging_up_server: str) -> None:
    raw = _error_of(lambda: requests.get(hanging_up_server + "/v1/models", timeout=5))
    assert net.classify_connection_error(raw) == net.RESET
    with LLMClient(hanging_up_server, timeout_s=5) as llm:
        error = _error_of(llm.list_models)
    assert isinstance(error, LLMError) and error.kind == net.RESET
    assert "connection reset" in str(error)
    with ComfyClient(hanging_up_server) as comfy:
        gone = _error_of(comfy.system_stats)
    assert isinstance(gone, ServerGone) and "reset or closed" in str(gone)


def test_a_silent_server_is_a_timeout() -> None:
    with socket.socket() as silent:  # accepts (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        raw = _error_of(lambda: requests.get(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.2))
    assert net.classify_connection_error(raw) == net.TIMEOUT


def test_names_of_errors_inside_other_errors() -> None:
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert net.classify_connection_error(wrapped) == net.DNS
    assert net.classify_connection_error(OSError(10061, "WSAECONNREFUSED")) == net.REFUSED
    assert net.classify_connection_error(OSError(10054, "WSAECONNRESET")) == net.RESET
    assert net.classify_connection_error(ValueError("something else")) == net.OTHER
    assert set(net.CONNECTION_KINDS) == {net.REFUSED, net.RESET, net.TIMEOUT, net.DNS, net.OTHER}
    assert net.innermost(wrapped).args[1] == "Name or service not known"


# ---------------------------------------------------------------------------------------- URLs, sessions
@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("127.0.0.1:8188", "http://127.0.0.1:8188"),
        ("http://127.0.0.1:8188/", "http://127.0.0.1:8188"),
        ("https://host/prefix//", "https://host/prefix"),
    ],
)
def test_server_url_is_the_same_for_both_clients(typed: str, expected: str) -> None:
    assert net.server_url(typed) == expected
    assert ComfyClient(typed).base_url == expected
    assert LLMClient(typed).endpoints.base == expected


@pytest.mark.parametrize(
    "typed", ["", "ftp://h:1", "http://", "http://h:99999", "http://h:1/?q=1", "http://h:0"]
)
def test_server_url_refuses_what_is_not_a_server(typed: str) -> None:
    with pytest.raises(ValueError):
        net.server_url(typed)
    with pytest.raises(ValueError, match="ComfyUI URL"):
        ComfyClient(typed)


def test_loopback_servers_are_not_reached_through_a_proxy() -> None:
    assert net.is_loopback("localhost") and net.is_loopback("127.0.0.2") and net.is_loopback("[::1]")
    assert not net.is_loopback("example.com") and not net.is_loopback(None)
    assert net.json_session("http://127.0.0.1:1").trust_env is False
    assert net.json_session("http://llm.example:1").trust_env is True
    assert net.redact_url("http://u:p@h:1/x") == "http://***@h:1/x"


# ---------------------------------------------------------------------------------------- untrusted text
def test_excerpts_are_bounded_and_show_control_characters() -> None:
    text = net.excerpt(b"\x1b[31mred\x1b[0m \xff" + b"x" * 1000, limit=40)
    assert text.startswith("\\x1b[31mred\\x1b[0m \ufffd") and text.endswith("…") and len(text) == 41
    assert net.one_line("a\n\tb\r\n  c\x07", 100) == "a b c\\x07"
    assert net.one_line("x" * 50, 10) == "x" * 9 + "…"
    assert net.visible("tab\tnew\nline") == "tab\tnew\nline"


def test_the_two_file_name_rules_differ_as_their_names_say() -> None:
    # A server's file name stays recognisable; a slug is ASCII made from free text.
    assert safe_file_name("Café frame_00001_.png") == "Café frame_00001_.png"
    assert slug("Café frame_00001_.png") == "Cafe-frame_00001_.png"
    for name in ("../..", "CON", "aux.png", "a/b\\c", "x\x00y"):
        for made in (safe_file_name(name), slug(name)):
            assert "/" not in made and "\\" not in made and "\x00" not in made and made not in ("", "..")
            assert made.split(".")[0].upper() not in ("CON", "AUX")
    long = safe_file_name("a" * 300 + ".png")
    assert len(long) == 180 and long.endswith(".png")
