"""Every configured ComfyUI server probed at start-up, so a wrong ``--comfyui-url`` fails at once.

Without it, an unreachable server was found only at stage 4, after the environment, the LLM and
the story had run (about 10 s). The probe is one ``GET /system_stats`` per server, side by side,
bounded by :data:`PROBE_S` in all. A server that answers at all passes here (what it answers is
the ComfyUI stage's to judge); the run stops only when none of the configured servers answers, as
a pool leaves out the servers that do not and goes on with the rest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pytest_gemdirect.comfyui.client import ComfyClient
from pytest_gemdirect.comfyui.errors import ComfyTimeout, ServerGone
from pytest_gemdirect.deadline import Deadline, DeadlineExceeded

PROBE_S = 4.0


def _silence(url: str) -> str | None:
    """Why ``url`` does not answer, or None when it does."""
    deadline = Deadline(PROBE_S, setting="start-up probe")
    try:
        with ComfyClient(url, request_timeout_s=PROBE_S) as client:
            client.system_stats(deadline=deadline)
    except (ServerGone, ComfyTimeout, DeadlineExceeded) as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - it answered, with something the ComfyUI stage will judge
        return None
    return None


def silent_servers(urls: tuple[str, ...]) -> dict[str, str]:
    """The configured servers that do not answer within :data:`PROBE_S`, with why."""
    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(urls), 8), thread_name_prefix="gemdirect probe") as pool:
        reasons = list(pool.map(_silence, urls))
    return {url: reason for url, reason in zip(urls, reasons, strict=True) if reason is not None}


def startup_problem(urls: tuple[str, ...]) -> str | None:
    """A usage error's text when no configured server answers (None: at least one does)."""
    silent = silent_servers(urls)
    if not urls or len(silent) < len(urls):
        return None
    said = "; ".join(f"{url}: {reason}" for url, reason in silent.items())
    return (
        f"comfyui_url: no configured ComfyUI server answered within {PROBE_S:g} s at start-up ({said});"
        " start ComfyUI there, or leave --comfyui-url out to run on the embedded simulator"
    )
