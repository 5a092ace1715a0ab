"""A slow, huge or hostile ComfyUI from the outside: a generated project runs ``pytest -m e2e`` with
``--sim-fault view-trickle``, ``history-huge``, ``names-hostile`` or ``history-garbage`` and we read
the exit status, run-summary.json, the terminal output and the files in (and around) the run
directory.

A deadline that fired is checked by the setting its failure names and what it says was happening,
never by how long it took; a size is checked in bytes. The measured figures (overshoot, peak RSS)
are in benchmarks/hostile_servers.py.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from pytest_gemdirect.comfyui.long_strings import LONG_STRING_KEEP, LongStringCut
from tests.outside import FAST, SCENE_WAIT_THAT_FIRES, PipelineRun, events, items, run_e2e, scenes, summary_of
from tests.runs import RECOVERED, RECOVERED_FAULTS, SharedRuns

CONTROL_OR_BIDI = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""What must never reach a terminal or a file name raw: C0 controls but tab and newline, DEL, C1
controls, and bidirectional marks, embeddings, overrides and isolates (ESC, BEL, NUL, U+202E …)."""

MB = 1024 * 1024


def fault_run(project: pytest.Pytester, *args: str, n: int = 3) -> PipelineRun:
    """``pytest -m e2e`` with a fallback story of ``n`` scenes, FAST's policy values, then ``args``."""
    return run_e2e(project, "--story-mode", "fallback", "--scenes", str(n), *FAST, *args)


def raw_controls(text: str) -> list[str]:
    """The control and bidi characters in ``text``, each with a little context, escaped for a message."""
    return [ascii(text[max(0, m.start() - 30) : m.end() + 10]) for m in CONTROL_OR_BIDI.finditer(text)]


# --- view-trickle ---------------------------------------------------------------------------------


def test_a_trickling_view_fails_that_scene_at_scene_max_wait_while_the_body_was_arriving(
    project: pytest.Pytester,
) -> None:
    # /view sends 1 KB a second; a frame is tens of KB: only the deadline can end the download.
    # FAST's scene-max-wait is overridden by the later value.
    result, run_dir, _ = fault_run(
        project, "--sim-fault", "view-trickle@scene-002", *SCENE_WAIT_THAT_FIRES, "--max-scene-retries", "0"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    data = summary_of(run_dir)
    by_scene = scenes(data)
    assert by_scene["scene-001"]["status"] == by_scene["scene-003"]["status"] == "passed"
    assert by_scene["scene-002"]["status"] == "failed"
    assert items(data, "svd")["svd[scene-002]"]["status"] == "passed"  # the job itself finished
    frames = items(data, "frames")["frames[scene-002]"]
    assert frames["status"] == "failed"
    message = frames["message"]
    # which setting ended it: the scene's deadline, named by its flag and its setting
    wait = SCENE_WAIT_THAT_FIRES[1]
    assert "--scene-max-wait" in message and f"scene_max_wait = {wait} s" in message, message
    assert "--completion-grace" not in message and "--max-response-mb" not in message
    # and what was happening: a body still arriving, some bytes in, not a wait for an answer's head
    assert "the body was still arriving" in message, message
    received = re.search(r"\((\d+) bytes received\)", message)
    assert received is not None and int(received.group(1)) > 0, message
    assert "GET /view" in message
    result.stdout.fnmatch_lines(["*frames[[]scene-002[]]*still arriving*--scene-max-wait*"])


# --- history-huge ---------------------------------------------------------------------------------


def test_a_huge_history_passes_and_only_a_bounded_excerpt_reaches_the_run_directory(
    project: pytest.Pytester,
) -> None:
    # about 50 MB of junk fields in every /history entry and in /object_info: under the 64 MB cap;
    # the harness's memory for it is in benchmarks/hostile_servers.py
    # a grace long enough to read three 50 MB answers on a busy 2-core machine: the test is of size
    result, run_dir, _ = fault_run(
        project, "--sim-fault", "history-huge", "--completion-grace", "60", "--scene-max-wait", "120"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    for scene_id in ("scene-001", "scene-002", "scene-003"):
        path = run_dir / scene_id / "history.json"
        assert path.stat().st_size < 1 * MB, (path, path.stat().st_size)
        entry = json.loads(path.read_text(encoding="utf-8"))
        assert entry["outputs"] and entry["status"]["status_str"] == "success"  # what the harness uses
        junk = [value for key, value in entry.items() if key.startswith("x_gemdirect_junk_")]
        assert junk, "the fault did not reach the history entry"  # so the bound above means something
        # each 1 MB junk string was cut while it arrived: a bounded start and what was left out
        cut = [re.search(r"\[\.\.\. (\d+) more bytes cut by gemdirect\]$", value) for value in junk]
        assert all(found and int(found.group(1)) > MB - 4096 for found in cut), [v[-60:] for v in junk]
    run_size = sum(path.stat().st_size for path in run_dir.rglob("*") if path.is_file())
    assert run_size < 20 * MB, run_size


def test_a_history_over_max_response_mb_fails_that_scene_naming_the_cap(project: pytest.Pytester) -> None:
    result, run_dir, _ = fault_run(
        project,
        "--max-response-mb",
        "10",
        "--sim-fault",
        "history-huge@scene-002",
        "--max-scene-retries",
        "0",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    data = summary_of(run_dir)
    by_scene = scenes(data)
    assert by_scene["scene-001"]["status"] == by_scene["scene-003"]["status"] == "passed"
    scene = by_scene["scene-002"]
    assert scene["status"] == "failed"
    assert [attempt["outcome"] for attempt in scene["attempts"]] == ["too_large"]
    message = items(data, "svd")["svd[scene-002]"]["message"]
    assert "--max-response-mb" in message and "10 MiB" in message, message
    assert "GET /history/" in message
    # read once and refused, not polled again until the grace ran out: no look at /history after the
    # completion signal but the refused one (a busy machine may add empty polls before it: not counted)
    assert "--completion-grace" not in message
    timeline = [e for e in events(run_dir, "scene-002") if e.get("event") in ("poll", "completion", "failed")]
    assert all(e.get("history") != "final" for e in timeline), timeline
    kinds = [e["event"] for e in timeline]
    assert kinds[-1] == "failed" and timeline[-1].get("kind") == "too_large", timeline
    if "completion" in kinds:
        assert kinds[kinds.index("completion") :] == ["completion", "failed"], kinds
    result.stdout.fnmatch_lines(["*svd[[]scene-002[]]*--max-response-mb*"])


# --- names-hostile --------------------------------------------------------------------------------

PYTESTER_OWN = ("stdout", "stderr", "runpytest-", ".cache/pytest-gemdirect")
"""What pytester itself makes in the project folder: the subprocess's output, and its ``--basetemp``
(``runpytest-0`` and the ``runpytest-current`` link); and, since pytester makes the project folder
the subprocess's HOME, the user's cache folder with the report's compiled templates."""


def files_under(folder: Path, *, skip: tuple[Path, ...]) -> set[str]:
    """Every file and folder below ``folder`` (relative), folders in ``skip`` left out whole."""
    found: set[str] = set()
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        dirs[:] = [d for d in dirs if here / d not in skip and d != "__pycache__"]
        found.update(str((here / name).relative_to(folder)) for name in dirs + names)
    return found


def test_hostile_output_names_stay_in_the_run_directory_and_reach_no_terminal_raw(
    project: pytest.Pytester,
) -> None:
    # SaveImage lists scene-001's first frames as ../../../escape_00001_.png, /etc/…, C:\…, a name
    # with a NUL, CON, aux.png, a bidi override, ESC[2J, an OSC title sequence and <script>.
    run_dir = project.path / "run"
    parent = project.path.parent
    project_before = files_under(project.path, skip=(run_dir,))
    parent_before = files_under(parent, skip=(project.path,))
    result, run_dir, _ = fault_run(project, "--sim-fault", "names-hostile@scene-001")

    # nothing written outside the run directory
    assert not Path("/etc/gemdirect_abs_00002_.png").exists()
    made = files_under(project.path, skip=(run_dir,)) - project_before
    assert {name for name in made if not name.startswith(PYTESTER_OWN) and name != ".cache"} == set(), made
    assert files_under(parent, skip=(project.path,)) - parent_before == set()

    # the NUL name is refused (it cannot be a file name anywhere), so scene-001's frames fail naming
    # it in visible form; every other hostile name is saved under a safe name inside the run
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    data = summary_of(run_dir)
    frames = items(data, "frames")["frames[scene-001]"]
    assert frames["status"] == "failed"
    assert "1 of 25 output files could not be retrieved" in frames["message"], frames["message"]
    assert "nul\\x00byte_00004_.png" in frames["message"] and "contains NUL" in frames["message"]
    assert "24 saved" in frames["message"]
    assert items(data, "svd")["svd[scene-001]"]["status"] == "passed"
    assert scenes(data)["scene-002"]["status"] == scenes(data)["scene-003"]["status"] == "passed"
    saved = sorted(p.name for p in (run_dir / "scene-001" / "generated-frames").iterdir())
    assert len(saved) == 24
    assert {"escape_00001_.png", "gemdirect_abs_00002_.png", "gemdirect_abs_00003_.png"} <= set(saved)
    assert {"_CON", "_aux.png"} <= set(saved)  # not the Windows devices
    assert "frame_00007_gnp.exe" in saved  # the bidi override dropped: it no longer shows as "….png"

    # no control or bidi character in any name in the run directory
    bad_names = [ascii(str(p)) for p in run_dir.rglob("*") if CONTROL_OR_BIDI.search(p.name)]
    assert bad_names == []

    # none reaches the terminal or the text summary raw
    stdout, stderr = "\n".join(result.outlines), "\n".join(result.errlines)
    summary_text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    for where, text in (("stdout", stdout), ("stderr", stderr), ("run-summary.txt", summary_text)):
        assert raw_controls(text) == [], where
    assert "nul\\x00byte_00004_.png" in stdout and "nul\\x00byte_00004_.png" in summary_text

    # the report escapes what it shows: no raw markup from the server anywhere in it
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in report
    assert raw_controls(report) == []
    assert "nul\\x00byte_00004_.png" in report


# --- history-garbage ------------------------------------------------------------------------------


def test_non_json_history_answers_are_polled_past_and_the_run_passes(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(RECOVERED)  # history-garbage@scene-005, other recovered faults beside it
    assert RECOVERED_FAULTS["scene-005"] == "history-garbage"
    result, run_dir = run.result, run.run_dir
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    assert [attempt["outcome"] for attempt in scenes(data)["scene-005"]["attempts"]] == ["success"]
    polls = [e for e in events(run_dir, "scene-005") if e.get("event") == "poll"]
    garbage = [p for p in polls if "that is not JSON" in str(p.get("history"))]
    assert len(garbage) == 3, polls  # the simulator's three garbage answers, each seen
    assert "502 Bad Gateway" in garbage[0]["history"]
    assert polls[-1]["history"] == "final" and polls.index(garbage[-1]) < len(polls) - 1
    assert not [e for e in events(run_dir, "scene-001") if "not JSON" in str(e.get("history"))]


# --- the cut of long strings that keeps a padded answer small (pytest_gemdirect/comfyui/long_strings)


def _fed_in_pieces(raw: bytes, cut: LongStringCut, rng: random.Random) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(raw):
        size = rng.randint(1, 40)
        out += cut.feed(raw[pos : pos + size])
        pos += size
    return bytes(out + cut.end())


def _same_but_long_strings_cut(sent: object, kept: object, limit: int, ensure_ascii: bool) -> None:
    if isinstance(sent, dict):
        assert isinstance(kept, dict) and len(kept) == len(sent)
        for value, kept_value in zip(sent.values(), kept.values(), strict=True):
            _same_but_long_strings_cut(value, kept_value, limit, ensure_ascii)
    elif isinstance(sent, list):
        assert isinstance(kept, list) and len(kept) == len(sent)
        for value, kept_value in zip(sent, kept, strict=True):
            _same_but_long_strings_cut(value, kept_value, limit, ensure_ascii)
    elif isinstance(sent, str) and len(json.dumps(sent, ensure_ascii=ensure_ascii).encode()) - 2 > limit:
        assert isinstance(kept, str)
        start, note, _ = kept.rpartition(" [... ")
        assert note and kept.endswith(" more bytes cut by gemdirect]") and sent.startswith(start)
    else:
        assert kept == sent


@pytest.mark.parametrize("seed", range(4))
def test_long_strings_are_cut_as_they_arrive_and_the_json_stays_valid(seed: int) -> None:
    # quotes, backslashes, \\uXXXX escapes, surrogate pairs, multi-byte UTF-8 and controls,
    # in pieces of any size: cut or kept, every string must still parse, and write as UTF-8
    rng = random.Random(seed)
    alphabet = ["a", '"', "\\", "\n", "é", "😀", "\u202e", "\x00", "/", " "]

    def text(longest: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))

    for _ in range(60):
        images = [text(300) for _ in range(4)]
        sent = {
            "outputs": {"9": {"images": images}},
            "n": 1.5,
            "status": {"status_str": text(500), "x": None},
        }
        limit = rng.randint(1, 200)
        ensure_ascii = rng.random() < 0.5
        raw = json.dumps(sent, ensure_ascii=ensure_ascii).encode()
        kept = json.loads(_fed_in_pieces(raw, LongStringCut(limit=limit, keep=rng.randint(0, limit)), rng))
        json.dumps(kept, ensure_ascii=False).encode("utf-8")  # no lone surrogate was left by a cut
        _same_but_long_strings_cut(sent, kept, limit, ensure_ascii)


def test_a_padded_answer_is_held_at_its_useful_size() -> None:
    entry = {"outputs": {"9": {"images": [{"filename": "frame_00001_.png"}]}}, "junk": "x" * (4 * MB)}
    cut = LongStringCut()
    kept = _fed_in_pieces(json.dumps(entry).encode(), cut, random.Random(0))
    assert len(kept) < 4 * 1024
    assert json.loads(kept)["outputs"] == entry["outputs"]
    assert cut.cut_strings == 1 and cut.cut_bytes == 4 * MB - LONG_STRING_KEEP
