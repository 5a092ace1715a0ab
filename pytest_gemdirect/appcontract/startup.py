"""Start-up checks of the app contract's settings: what can be known before anything runs.

``--publish-latest`` needs the export it publishes; the ``gemdirect`` suite preset needs the
Node version the app declares (22.19 or newer), asked of ``node --version`` on PATH.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pytest_gemdirect.settings import SettingError, Settings

NODE_PROBE_TIMEOUT_S = 20.0


def node_version() -> tuple[str | None, str]:
    """(``node --version``'s answer or None, where node was found or why not).

    Node is found as the suites find their programs (``cmdline.resolve_program``)."""
    from pytest_gemdirect.cmdline import resolve_program
    from pytest_gemdirect.processes import run_captured

    try:
        program = resolve_program("node", cwd=None)
    except OSError as exc:
        return None, f"no 'node' program on PATH ({exc})"
    try:
        done = run_captured([str(program), "--version"], timeout_s=NODE_PROBE_TIMEOUT_S)
    except OSError as exc:
        return None, f"{program} --version could not start: {exc}"
    answer = done.stdout.strip().splitlines()
    if done.exit_code != 0 or not answer:
        return None, f"{program} --version gave no version (exit code {done.exit_code})"
    return answer[0], str(program)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``v22.19.0`` -> (22, 19, 0); None when it does not look like a version."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def check_node(
    preset: str,
    needed: tuple[int, int],
    source: str,
    probe: Callable[[], tuple[str | None, str]] = node_version,
) -> None:
    """SettingError when Node is missing or older than ``needed``, saying what was found."""
    answer, where = probe()
    want = f"{needed[0]}.{needed[1]}"
    if answer is None:
        raise SettingError(
            f"suites ({source}): the {preset!r} preset runs the app's vitest suites with Node {want} or"
            f" newer, but: {where}"
        )
    version = parse_version(answer)
    if version is None or version[:2] < needed:
        raise SettingError(
            f"suites ({source}): the {preset!r} preset runs the app's vitest suites, which need Node"
            f" {want} or newer; {where} is {answer}: install Node {want}+ or put it first on PATH"
        )


def check_app_contract(
    settings: Settings, probe: Callable[[], tuple[str | None, str]] = node_version
) -> None:
    """Raises SettingError naming the setting and its source."""
    if settings.publish_latest is not None and not settings.app_contract:
        raise SettingError(
            f"publish_latest ({settings.sources['publish_latest']}) publishes artifact-metadata.json,"
            f" which app_contract = false ({settings.sources['app_contract']}) switches off"
        )
    from pytest_gemdirect.suites import NODE_NEEDED, parse_suite_specs

    try:
        specs = parse_suite_specs(list(settings.suites))
    except ValueError:
        return  # the suites stage names a bad suite value itself
    for preset in dict.fromkeys(spec.preset for spec in specs if spec.preset in NODE_NEEDED):
        assert preset is not None
        check_node(preset, NODE_NEEDED[preset], settings.sources["suites"], probe)
