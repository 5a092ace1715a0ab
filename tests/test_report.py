"""The HTML report, read back as HTML (parsed, never string-matched) and opened in headless Chromium."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bs4 import BeautifulSoup, Tag
from PIL import Image, ImageDraw

from pytest_gemdirect.catalogue import StageKey
from pytest_gemdirect.report import (
    BaselineError,
    load_baseline,
    render_overview,
    render_page,
    write_report,
)
from pytest_gemdirect.rundir import RunDirectory
from pytest_gemdirect.summary import RunSummary, validate_summary
from tests.outside import runpytest
from tests.runs import FAILED_SCENE, PASSING, SharedRuns

HOSTILE = "<img src=x onerror=alert(1)>"
SIZE_LIMIT = 5 * 1024 * 1024
CHROMIUM = Path("/usr/bin/chromium")
GIB = 1024**3


# --- a run directory made here: 1024x576 frames, one failed scene -------------------------------


def make_frame(index: int, count: int, *, seed: int, size: tuple[int, int] = (1024, 576)) -> Image.Image:
    """A frame that compresses like a real one: gradients, moving shapes and some sensor noise."""
    width, height = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.linear_gradient("L").rotate(90).resize(size)
    blue = Image.new("L", size, (seed * 70 + index * 4) % 256)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    x = 80 + index * (width - 240) // max(count, 1)
    draw.ellipse((x, height // 3, x + 160, height // 3 + 160), fill=(240, 200, 40))
    draw.rectangle((width - x - 100, height * 2 // 3, width - x, height * 2 // 3 + 100), fill=(30, 60, 200))
    return Image.blend(image, Image.effect_noise(size, 24).convert("RGB"), 0.12)


@pytest.fixture(scope="session")
def frame_bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 frames at 1024x576 for each of 3 scenes, made once per session (about 4 s)."""
    bank = tmp_path_factory.mktemp("frames")
    for scene in (1, 2, 3):
        folder = bank / f"scene-{scene:03d}"
        folder.mkdir()
        make_frame(0, 25, seed=scene).save(folder / "keyframe.png", compress_level=1)
        for index in range(25):
            frame = make_frame(index, 25, seed=scene)
            frame.save(folder / f"frame_{index + 1:05d}_.png", compress_level=1)
    return bank


def base_summary(run_dir: Path, *, scenes: int = 3, failed: str | None = "scene-002") -> dict[str, Any]:
    """A finished run's summary, shaped like RunSummary's (schema-valid)."""
    scene_ids = [f"scene-{n:03d}" for n in range(1, scenes + 1)]
    items_svd, items_frames, scene_records = [], [], []
    for number, sid in enumerate(scene_ids, start=1):
        ok = sid != failed
        gen = 10.0 + number
        items_svd.append(
            {
                "key": f"svd[{sid}]",
                "status": "passed" if ok else "failed",
                "duration_s": gen + 1.5 if ok else 6.2,
                "message": None
                if ok
                else (
                    f"{sid} generation: execution_error in KSampler (node 3): CUDA out of memory."
                    " Tried to allocate 2.00 GiB (attempt 1 of 1, --max-scene-retries = 0)"
                ),
            }
        )
        items_frames.append(
            {
                "key": f"frames[{sid}]",
                "status": "passed" if ok else "not_reached",
                "duration_s": 0.8 if ok else 0.0,
                "message": None if ok else f"not reached: svd[{sid}] failed",
            }
        )
        record: dict[str, Any] = {
            "id": sid,
            "status": "passed" if ok else "failed",
            "title": f"Scene {number}: the lighthouse",
            "prompt_id": f"prompt-{number:04d}",
            "failed_stage": None if ok else "svd",
            "message": None if ok else items_svd[-1]["message"],
            "attempts": [
                {
                    "number": 1,
                    "started_at": f"2026-11-29T02:0{number}:00.000+00:00",
                    "ended_at": f"2026-11-29T02:0{number}:12.000+00:00",
                    "outcome": "success" if ok else "execution_error",
                    "reason": None if ok else "execution_error in KSampler (node 3)",
                    "prompt_id": f"prompt-{number:04d}",
                }
            ],
            "frame_count": 25 if ok else 0,
            "frames_dir": f"{sid}/generated-frames" if ok else None,
            "telemetry": {
                "queue_wait_s": 0.4,
                "generation_s": gen if ok else None,
                "retrieval_s": 0.8 if ok else None,
                "seconds_per_step": round(gen / 25, 3) if ok else None,
                "steps": 25 if ok else None,
                "vram_free_before": 20 * GIB,
                "vram_free_after": (12 - number) * GIB if ok else None,
            },
            "files": (
                {
                    "keyframe": f"{sid}/keyframe.png",
                    "history": f"{sid}/history.json",
                    "scene": f"{sid}/scene.json",
                    "events": f"{sid}/events.jsonl",
                    "workflow": f"{sid}/workflow.json",
                }
                if ok
                else {}
            ),
            "notes": [],
            "evidence": None,
        }
        if not ok:
            record["evidence"] = {
                "kind": "execution_error",
                "prompt_id": f"prompt-{number:04d}",
                "last_progress": {"value": 12, "max": 25},
                "poll_attempts": 3,
                "last_messages": [
                    {"type": "progress", "data": {"value": 12, "max": 25, "node": "3"}},
                    {"type": "executing", "data": {"node": "3"}},
                    {"type": "execution_error", "data": {"node_id": "3", "node_type": "KSampler"}},
                ],
                "error": {
                    "node_id": "3",
                    "node_type": "KSampler",
                    "exception_type": "torch.OutOfMemoryError",
                    "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
                    "traceback": [
                        "Traceback (most recent call last):\n",
                        '  File "execution.py", line 496, in execute\n',
                        "torch.OutOfMemoryError: CUDA out of memory\n",
                    ],
                },
            }
        scene_records.append(record)
    svd_failed = failed is not None
    return {
        "schema_version": 1,
        "run_id": run_dir.name,
        "status": "failed" if svd_failed else "passed",
        "status_reason": "failed: svd" if svd_failed else None,
        "started_at": "2026-11-29T02:00:00+00:00",
        "finished_at": "2026-11-29T02:05:00+00:00",
        "duration_s": 300.0,
        "run_dir": str(run_dir),
        "simulated": True,
        "harness_version": "0.1.0",
        "backends": {
            "comfyui": {
                "target": "embedded",
                "url": "http://127.0.0.1:40001",
                "simulated": True,
                "version": "0.3.64",
                "pid": None,
                "log": None,
            },
            "llm": {"target": "embedded", "url": "http://127.0.0.1:40002", "simulated": True},
        },
        "settings": {
            "comfyui_url": None,
            "llm_url": None,
            "llm_model": None,
            "llm_api_key": "***",
            "llm_timeout": 120.0,
            "llm_seed": 42,
            "scenes": scenes,
            "scene_max_wait": 180.0,
            "history_poll_interval": 2.0,
            "history_max_attempts": 30,
            "completion_grace": 30.0,
            "ws_idle_timeout": 15.0,
            "max_scene_retries": 0,
            "suite": [],
            "suite_timeout": 600.0,
            "sim_fault": ["execution-error@scene-002"] if svd_failed else [],
        },
        "setting_sources": {
            "llm_api_key": "from GEMDIRECT_LLM_API_KEY",
            "max_scene_retries": "from --max-scene-retries",
            "sim_fault": "from --sim-fault",
        },
        "stages": [
            {"name": "env", "status": "passed", "duration_s": 0.3, "message": None},
            {"name": "llm", "status": "passed", "duration_s": 1.2, "message": None},
            {"name": "story", "status": "passed", "duration_s": 2.5, "message": None},
            {"name": "comfyui", "status": "passed", "duration_s": 3.1, "message": None},
            {
                "name": "svd",
                "status": "failed" if svd_failed else "passed",
                "duration_s": round(sum(i["duration_s"] for i in items_svd), 3),
                "message": next((i["message"] for i in items_svd if i["message"]), None),
                "items": items_svd,
            },
            {
                "name": "frames",
                "status": "passed",
                "duration_s": round(sum(i["duration_s"] for i in items_frames), 3),
                "message": None,
                "items": items_frames,
            },
            {
                "name": "suites",
                "status": "skipped",
                "duration_s": 0.0,
                "message": "no external suites configured",
            },
            {"name": "summary", "status": "passed", "duration_s": 0.1, "message": None},
        ],
        "scenes": scene_records,
        "story": {
            "path": "story/story.json",
            "title": "The lighthouse keeper",
            "scenes": [
                {
                    "id": sid,
                    "title": f"Scene {n}: the lighthouse",
                    "visual_prompt": f"a lighthouse at dusk, shot {n}",
                    "motion_prompt": "slow push in",
                }
                for n, sid in enumerate(scene_ids, start=1)
            ],
            "metadata": {"mode": "llm", "model": "qwen2.5-7b-instruct", "seed": 42, "temperature": 0.35},
        },
        "environment": {
            "python": "3.11.7",
            "platform": "Linux-6.1-x86_64",
            "packages": {"pytest": "9.0.3", "Pillow": "13.0.0"},
            "gpu": {"visible": False, "note": "nvidia-smi not found on this machine", "gpus": []},
        },
        "llm": {"healthy": True, "model": "qwen2.5-7b-instruct", "first_latency_s": 0.8},
        "comfyui": {
            "url": "http://127.0.0.1:40001",
            "version": "0.3.64",
            "devices": [
                {
                    "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                    "type": "cuda",
                    "index": 0,
                    "vram_total": 24 * GIB,
                    "vram_free": 20 * GIB,
                }
            ],
            "workflow": "svd_img2vid.json",
            "workflow_hash": "abc123",
            "node_classes": 478,
            "startup_warnings": [
                {"kind": "missing_package", "message": "torchaudio is not installed", "line_no": 12}
            ],
        },
        "suites": [],
        "warnings": ["story: the LLM answered slowly (cold model load)"],
        "artifacts": {"story": "story/story.json"},
    }


def write_run(run_dir: Path, data: dict[str, Any], frame_bank: Path) -> dict[str, Any]:
    """Lay out the run directory the summary describes (keyframes, frames, scene files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    story = run_dir / "story"
    (story / "keyframes").mkdir(parents=True, exist_ok=True)
    (story / "story.json").write_text(json.dumps(data["story"]), encoding="utf-8")
    for scene in data["scenes"]:
        sid = scene["id"]
        source = frame_bank / sid
        folder = run_dir / sid
        folder.mkdir(exist_ok=True)
        shutil.copyfile(source / "keyframe.png", folder / "keyframe.png")
        shutil.copyfile(source / "keyframe.png", story / "keyframes" / f"{sid}.png")
        (folder / "events.jsonl").write_text('{"event": "attempt_start"}\n', encoding="utf-8")
        (folder / "workflow.json").write_text("{}", encoding="utf-8")
        progress = [[0.5 * n, n, 25] for n in range(1, 26 if scene["status"] == "passed" else 13)]
        (folder / "scene.json").write_text(json.dumps({**scene, "progress": progress}), encoding="utf-8")
        if scene["frames_dir"]:
            (folder / "history.json").write_text("{}", encoding="utf-8")
            shutil.copytree(
                source, run_dir / scene["frames_dir"], ignore=shutil.ignore_patterns("keyframe.png")
            )
    (run_dir / "run-summary.json").write_text(json.dumps(data), encoding="utf-8")
    (run_dir / "run-summary.txt").write_text("summary\n", encoding="utf-8")
    return data


@pytest.fixture
def failed_run(tmp_path: Path, frame_bank: Path) -> tuple[Path, dict[str, Any]]:
    """A run directory: 3 scenes of 25 frames at 1024x576, scene-002 failed in generation."""
    run_dir = tmp_path / "20261129-020000"
    data = write_run(run_dir, base_summary(run_dir), frame_bank)
    assert validate_summary(data) == []
    return run_dir, data


def parse(markup: str) -> BeautifulSoup:
    return BeautifulSoup(markup, "html.parser")


def section(soup: BeautifulSoup, name: str) -> Tag:
    found = soup.find("section", id=f"gd-{name}")
    assert isinstance(found, Tag), f"no section gd-{name}"
    return found


def text_of(tag: Tag) -> str:
    return " ".join(tag.get_text(" ").split())


def stage_rows(soup: BeautifulSoup) -> dict[str, Tag]:
    return {row["data-stage"]: row for row in section(soup, "steps").find_all("tr", class_="gd-stage")}


def item_rows(soup: BeautifulSoup) -> dict[str, Tag]:
    return {row["data-key"]: row for row in section(soup, "steps").find_all("tr", class_="gd-item")}


# --- sections ------------------------------------------------------------------------------------


def test_verdict_comes_first_with_the_first_failure_and_where_to_look(failed_run):
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    root = soup.find("div", class_="gemdirect-report")
    assert isinstance(root, Tag)
    verdict = root.find("div", class_="gd-verdict")
    assert verdict["data-status"] == "failed"
    assert "FAILED" in text_of(verdict) and "SIMULATED" in text_of(verdict)
    # the verdict comes before every section
    assert root.find_all(["div", "section"])[0] is verdict or verdict.find_previous("section") is None
    headline = " ".join(text_of(p) for p in root.find_all("p", class_="gd-headline"))
    assert "step 5 (generation), scene-002" in headline
    assert "CUDA out of memory" in headline
    look = [a["href"] for a in root.find_all("p", class_="gd-headline")[-1].find_all("a")]
    assert "scene-002/events.jsonl" in look


def test_step_table_has_every_stage_and_scenes_as_sub_rows(failed_run):
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    rows = stage_rows(soup)
    assert list(rows) == ["env", "llm", "story", "comfyui", "svd", "frames", "suites", "summary"]
    cells = [td.get_text(" ", strip=True) for td in rows["svd"].find_all("td")]
    assert cells[1] == "generation" and cells[2].startswith("✘ failed")
    assert cells[3] == "23.70 s" or cells[3].endswith(" s")
    assert "CUDA out of memory" in cells[4]
    assert rows["env"].find("span", class_="gd-st-passed").get_text() == "✔ passed"
    suites = text_of(rows["suites"])
    assert "» skipped" in suites and "no external suites configured" in suites
    items = item_rows(soup)
    assert set(items) >= {f"{stage}[scene-00{n}]" for stage in ("svd", "frames") for n in (1, 2, 3)}
    assert "‖ not reached" in text_of(items["frames[scene-002]"])
    assert "not reached: svd[scene-002] failed" in text_of(items["frames[scene-002]"])
    assert "25 frames" in text_of(items["frames[scene-001]"])
    assert "prompt prompt-0001" in text_of(items["svd[scene-001]"])
    # the sub-rows follow their stage's row
    assert items["svd[scene-001]"].find_previous("tr", class_="gd-stage")["data-stage"] == "svd"
    assert items["frames[scene-003]"].find_previous("tr", class_="gd-stage")["data-stage"] == "frames"


def test_what_went_wrong_says_stage_scene_expectation_evidence_and_bounding_setting(failed_run):
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    failures = section(soup, "failures").find_all("div", class_="gd-failure")
    assert [f["data-key"] for f in failures] == ["svd[scene-002]"]
    facts = {
        tr.th.get_text(strip=True): tr.td for tr in failures[0].find("table").find_all("tr", recursive=False)
    }
    if not facts:
        facts = {
            tr.th.get_text(strip=True): tr.td
            for tr in failures[0].find("tbody").find_all("tr", recursive=False)
        }
    assert "step 5, generation, scene-002" in text_of(facts["where"])
    assert "execution_success" in text_of(facts["expected"])
    assert "CUDA out of memory" in text_of(facts["what happened"])
    seen = text_of(facts["seen last"])
    assert "12/25" in seen  # last progress value/max
    assert "torch.OutOfMemoryError" in seen and "KSampler" in seen  # the server's error
    assert "execution.py" in facts["seen last"].find("pre", class_="gd-traceback").get_text()
    assert "execution_error" in facts["seen last"].find("pre", class_="gd-messages").get_text()
    assert "/history polls" in seen and "3" in seen
    bounded = text_of(facts["bounded by"])
    assert "max_scene_retries = 0" in bounded and "--max-scene-retries" in bounded
    assert "scene_max_wait = 180.0" in text_of(facts["other limits of this step"])
    assert "execution_error" in text_of(facts["attempts"])
    hrefs = [a["href"] for a in facts["look next at"].find_all("a")]
    assert "scene-002/events.jsonl" in hrefs and "run-summary.json" in hrefs


def test_status_marks_are_symbols_every_font_has_beside_the_status_word(failed_run):
    # the terminal's emoji marks render as empty boxes in a browser without an emoji font
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    marks = {}
    for span in soup.find_all("span", class_="gd-st"):
        mark = span.find("span", class_="gd-mark")
        assert mark["aria-hidden"] == "true"  # a screen reader reads the word, not the mark
        marks[span["class"][1]] = text_of(span)
    assert marks == {
        "gd-st-passed": "✔ passed",
        "gd-st-failed": "✘ failed",
        "gd-st-not_reached": "‖ not reached",
        "gd-st-skipped": "» skipped",
    }
    assert not re.search("[✅❌⏸⏭⏹]", soup.get_text())


def test_a_passed_run_says_nothing_went_wrong_and_a_real_one_has_no_banner(tmp_path, frame_bank):
    run_dir = tmp_path / "run"
    data = base_summary(run_dir, failed=None)
    data["simulated"] = False
    for backend in data["backends"].values():
        backend["simulated"] = False
        backend["target"] = "attached"
    write_run(run_dir, data, frame_bank)
    soup = parse(render_overview(data, run_dir))
    assert soup.find("div", class_="gd-verdict")["data-status"] == "passed"
    assert text_of(soup.find("div", class_="gd-verdict")) == "✔ PASSED"
    assert soup.find(class_="gd-simulated") is None
    assert "Nothing went wrong" in text_of(section(soup, "failures"))
    assert soup.find("div", class_="gd-failure") is None


def test_backends_with_a_clear_banner_when_simulated(failed_run):
    run_dir, data = failed_run
    data["backends"]["comfyui"].update(target="launched", pid=4242, log="comfyui.log")
    (run_dir / "comfyui.log").write_text("started\n", encoding="utf-8")
    soup = parse(render_overview(data, run_dir))
    banner = soup.find("p", class_="gd-simulated")
    assert banner is not None and "SIMULATED" in text_of(banner) and "comfyui, llm" in text_of(banner)
    rows = section(soup, "backends").find("table").find("tbody").find_all("tr")
    cells = {tr.td.get_text(strip=True): [td.get_text(strip=True) for td in tr.find_all("td")] for tr in rows}
    assert cells["comfyui"][1:6] == ["launched", "http://127.0.0.1:40001", "SIMULATED", "0.3.64", "4242"]
    assert cells["llm"][1] == "embedded"
    assert section(soup, "backends").find("a", href="comfyui.log") is not None
    assert "478" in text_of(section(soup, "backends"))


def test_configuration_shows_values_and_sources_with_secrets_redacted(failed_run):
    run_dir, data = failed_run
    data["llm"]["api_key"] = "sk-live-should-never-show"
    data["settings"]["comfyui_token"] = "tok-should-never-show"
    data["story"]["metadata"]["auth_header"] = "Bearer should-never-show"
    markup = render_overview(data, run_dir)
    soup = parse(markup)
    config = {
        tr.find_all("td")[0].get_text(strip=True): [td.get_text(strip=True) for td in tr.find_all("td")[1:]]
        for tbody in section(soup, "config").find_all("tbody")  # what differs, and the folded defaults
        for tr in tbody.find_all("tr")
    }
    assert config["llm_api_key"] == ["***", "from GEMDIRECT_LLM_API_KEY"]
    assert config["comfyui_token"][0] == "***"
    assert config["max_scene_retries"] == ["0", "from --max-scene-retries"]
    assert config["scene_max_wait"] == ["180.0", ""]
    all_text = soup.get_text(" ")
    assert "should-never-show" not in all_text
    assert "should-never-show" not in " ".join(
        str(v) for tag in soup.find_all(True) for v in tag.attrs.values()
    )


def test_timings_per_stage_and_scene_and_a_timeline_picture(failed_run):
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    timings = section(soup, "timings")
    scenes = {
        tr["data-scene"]: [td.get_text(strip=True) for td in tr.find_all("td")]
        for tr in timings.find_all("tr", attrs={"data-scene": True})
    }
    assert scenes["scene-001"][2:7] == ["0.40 s", "11.0 s", "0.80 s", "0.440 s", "25"]
    assert scenes["scene-002"][1].startswith("✘")
    svg = timings.find("svg", class_="gd-timeline")
    assert svg is not None
    tips = [t.get_text() for t in svg.find_all("title")]
    for key in ("env", "svd[scene-001]", "frames[scene-001]", "svd[scene-002]", "summary"):
        assert any(tip.startswith(f"{key}:") for tip in tips), key
    assert any("queue wait 0.40 s" in tip for tip in tips)
    lanes = [t.get_text() for t in svg.find_all("text", class_="gd-lane")]
    assert lanes[:5] == ["environment", "LLM health", "story", "ComfyUI startup", "generation"]
    failed_bar = next(g for g in svg.find_all("g") if g.title.get_text().startswith("svd[scene-002]"))
    assert failed_bar.rect["fill"] == "#c62828"


def test_gpu_section_with_vram_per_scene_and_a_plot(failed_run):
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    gpu = section(soup, "gpu")
    assert "RTX 4090" in text_of(gpu)
    assert "nvidia-smi not found" in text_of(gpu)
    per_scene = [tr for tr in gpu.find_all("tr") if tr.td and tr.td.get_text() == "scene-001"]
    assert [td.get_text() for td in per_scene[0].find_all("td")][1:] == [
        "20.00 GiB",
        "11.00 GiB",
        "9.00 GiB",
        "13.00 GiB",
    ]
    svg = gpu.find("svg", class_="gd-vram")
    assert svg.find("polyline", class_="gd-line-vram") is not None
    assert svg.find("polyline", class_="gd-line-util") is None
    # with samples, VRAM and utilisation over the run
    data["comfyui"]["gpu_samples"] = [
        {"t": t, "memory_used_mib": 4000 + 300 * t, "utilization_pct": min(100, 20 * t)} for t in range(10)
    ]
    svg = section(parse(render_overview(data, run_dir)), "gpu").find("svg", class_="gd-vram")
    assert len(svg.find("polyline", class_="gd-line-vram")["points"].split()) == 10
    assert svg.find("polyline", class_="gd-line-util") is not None


def test_gpu_samples_of_each_scene_are_plotted_on_the_run_clock(failed_run):
    run_dir, data = failed_run
    for sid, peak in (("scene-001", 14000), ("scene-003", 15000)):
        record = json.loads((run_dir / sid / "scene.json").read_text(encoding="utf-8"))
        samples = []
        for gpu in (0, 1):  # two GPUs: the first one is plotted
            samples += [
                {
                    "t": t,
                    "gpu": gpu,
                    "memory_used_mib": peak - 400 * (5 - t),
                    "memory_total_mib": 24576,
                    "utilization_pct": 95,
                }
                for t in range(6)
            ]
        samples += [
            {"t": 0.5, "gpu": 0, "memory_used_mib": 3000, "memory_total_mib": 24576, "utilization_pct": 5}
        ]
        record["gpu_samples"] = samples  # the last one: a second attempt, its clock began again
        record["gpu_note"] = None
        (run_dir / sid / "scene.json").write_text(json.dumps(record), encoding="utf-8")
    record = json.loads((run_dir / "scene-002" / "scene.json").read_text(encoding="utf-8"))
    record["gpu_note"] = "GPU not sampled: ComfyUI was not launched by the harness on this machine"
    (run_dir / "scene-002" / "scene.json").write_text(json.dumps(record), encoding="utf-8")
    gpu = section(parse(render_overview(data, run_dir)), "gpu")
    svg = gpu.find("svg", class_="gd-vram")
    points = [
        tuple(map(float, p.split(","))) for p in svg.find("polyline", class_="gd-line-vram")["points"].split()
    ]
    assert len(points) == 2 * 7
    assert [x for x, _ in points] == sorted(
        x for x, _ in points
    )  # scene-001 before scene-003, attempts in order
    assert svg.find("polyline", class_="gd-line-util") is not None
    assert "total 24.00 GiB" in text_of(svg)
    assert "nvidia-smi samples" in text_of(gpu)
    assert "GPU not sampled: ComfyUI was not launched" in text_of(gpu)
    peak = next(tr for tr in gpu.find_all("tr") if tr.td and tr.td.get_text() == "scene-003")
    assert peak.find_all("td")[-1].get_text() == f"{15000 / 1024:.2f} GiB"


def test_story_with_prompts_and_mode_model_seed(failed_run):
    run_dir, data = failed_run
    story = section(parse(render_overview(data, run_dir)), "story")
    head = {
        tr.th.get_text(strip=True): tr.td.get_text(strip=True)
        for tr in story.find("table", class_="gd-kv").find_all("tr")
    }
    assert head["title"] == "The lighthouse keeper"
    assert (head["mode"], head["model"], head["seed"]) == ("llm", "qwen2.5-7b-instruct", "42")
    assert head["file"] == "story/story.json"
    rows = {
        tr["data-scene"]: [td.get_text(strip=True) for td in tr.find_all("td")]
        for tr in story.find_all("tr", attrs={"data-scene": True})
    }
    assert rows["scene-002"][1].startswith("✘")
    assert rows["scene-003"][3:5] == ["a lighthouse at dusk, shot 3", "slow push in"]


def image_of(src: str) -> Image.Image:
    assert src.startswith("data:image/")
    import base64

    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def test_gallery_keyframe_strip_and_animated_preview_with_links_to_full_frames(failed_run):
    run_dir, data = failed_run
    gallery = section(parse(render_overview(data, run_dir)), "gallery")
    cards = {card["data-scene"]: card for card in gallery.find_all("div", class_="gd-scene-card")}
    assert list(cards) == ["scene-001", "scene-002", "scene-003"]
    card = cards["scene-001"]
    keyframe = card.find("figure", class_="gd-keyframe")
    assert keyframe.a["href"] == "scene-001/keyframe.png"
    assert image_of(keyframe.img["src"]).size == (256, 144)
    strip = card.find("div", class_="gd-strip").find_all("a")
    assert len(strip) == 6
    assert strip[0]["href"] == "scene-001/generated-frames/frame_00001_.png"
    assert strip[-1]["href"] == "scene-001/generated-frames/frame_00025_.png"
    assert all((run_dir / a["href"]).is_file() for a in strip)
    assert image_of(strip[0].img["src"]).width == 160
    anim = image_of(card.find("figure", class_="gd-anim").img["src"])
    assert anim.format in ("WEBP", "GIF") and anim.n_frames == 12 and anim.width <= 256
    # the failed scene: its keyframe, and why there are no frames
    failed = cards["scene-002"]
    assert failed.find("figure", class_="gd-keyframe") is not None
    assert failed.find("div", class_="gd-strip") is None
    assert "No frames" in text_of(failed) and "CUDA out of memory" in text_of(failed)
    assert (run_dir / "scene-001" / "preview" / "manifest.json").is_file()


def add_video(run_dir: Path, data: dict[str, Any], scene_id: str, **fields: Any) -> dict[str, Any]:
    """Give a scene what the frames stage records: its gallery clip (made from its frames) and figures."""
    from pytest_gemdirect.video import write_clip

    scene = next(s for s in data["scenes"] if s["id"] == scene_id)
    frames_dir = run_dir / (scene["frames_dir"] or "scene-001/generated-frames")
    pictures = (np.asarray(Image.open(path).convert("RGB")) for path in sorted(frames_dir.glob("*.png")))
    write_clip(pictures, run_dir / scene_id / "clip.mp4")
    series = [round(1.0 + 0.1 * (i % 5), 3) for i in range(24)]
    scene["video"] = {
        "frame_count": 25,
        "width": 1024,
        "height": 576,
        "fps": None,
        "duration_s": None,
        "codec": "png",
        "container": "image-sequence",
        "motion": round(sum(series) / len(series), 3),
        "motion_series": series,
        "black_frames": [],
        "flat_frames": [],
        "clip": f"{scene_id}/clip.mp4",
        "problems": [],
        **fields,
    }
    scene["files"]["clip"] = f"{scene_id}/clip.mp4"
    return scene


def test_gallery_plays_each_scenes_clip_and_charts_its_motion(failed_run):
    run_dir, data = failed_run
    data["settings"]["min_motion"] = 0.5
    moving = add_video(run_dir, data, "scene-001")
    frozen = "scene-003 frame_00001_.png … frame_00025_.png (25 files): frozen: motion 0.00 is below"
    add_video(run_dir, data, "scene-003", motion=0.0, motion_series=[0.0] * 24, problems=[frozen])
    validate = validate_summary(data)
    assert validate == []
    page = parse(render_page(data, run_dir))
    assert_self_contained(page)
    cards = {c["data-scene"]: c for c in section(page, "gallery").find_all("div", class_="gd-scene-card")}
    for scene_id in ("scene-001", "scene-003"):
        video = cards[scene_id].find("video")
        assert video.has_attr("controls") and video.has_attr("muted") and video.has_attr("playsinline")
        source = video.find("source")
        assert source["type"] == "video/mp4" and source["src"].startswith("data:video/mp4;base64,")
        clip = base64.b64decode(source["src"].split(",", 1)[1])
        assert clip == (run_dir / scene_id / "clip.mp4").read_bytes()
        chart = cards[scene_id].find("svg", class_="gd-motion")
        assert len(chart.find("polyline", class_="gd-line-motion")["points"].split()) == 24
        assert "frozen below 0.5" in text_of(chart)
    assert f"motion {moving['video']['motion']:.2f}" in text_of(cards["scene-001"])
    problem = cards["scene-003"].find("p", class_="gd-video-problem")
    assert text_of(problem).startswith("scene-003 frame_00001_.png") and "frozen" in text_of(problem)
    assert cards["scene-002"].find("video") is None and cards["scene-002"].find("svg") is None
    content_security = page.find("meta", attrs={"http-equiv": "Content-Security-Policy"})["content"]
    assert "media-src data:" in content_security


def test_clips_past_the_reports_budget_are_linked_not_embedded(failed_run, monkeypatch):
    from pytest_gemdirect.report import sections

    run_dir, data = failed_run
    first = add_video(run_dir, data, "scene-001")
    add_video(run_dir, data, "scene-003")
    monkeypatch.setattr(sections, "CLIP_EMBED_BUDGET", (run_dir / first["video"]["clip"]).stat().st_size)
    cards = {
        c["data-scene"]: c
        for c in section(parse(render_overview(data, run_dir)), "gallery").find_all(
            "div", class_="gd-scene-card"
        )
    }
    assert cards["scene-001"].find("video") is not None  # the first fits
    assert cards["scene-003"].find("video") is None
    assert cards["scene-003"].find("a", href="scene-003/clip.mp4") is not None
    assert "not embedded" in text_of(cards["scene-003"])


def test_drift_against_the_baseline_is_shown_flagged_or_not_comparable(failed_run):
    run_dir, data = failed_run
    drift = {"tolerance": 30.0, "identical": False, "per_frame": [], "reason": None}
    data["scenes"][0]["drift"] = {
        **drift,
        "comparable": True,
        "min_psnr": 12.3,
        "mean_psnr": 21.0,
        "flagged": True,
        "message": f"scene-001 {HOSTILE}: drift: lowest PSNR 12.3 dB (frame 3) is below the tolerance",
    }
    data["scenes"][2]["drift"] = {
        **drift,
        "comparable": False,
        "reason": f"not comparable: the seed 7 differs from the baseline's 42 {HOSTILE}",
        "min_psnr": None,
        "mean_psnr": None,
        "flagged": False,
        "message": None,
    }
    assert validate_summary(data) == []
    markup = render_overview(data, run_dir)
    assert HOSTILE not in markup
    cards = {
        c["data-scene"]: c for c in section(parse(markup), "gallery").find_all("div", class_="gd-scene-card")
    }
    flagged = cards["scene-001"].find("p", class_="gd-drift")
    assert "gd-drift-flagged" in flagged["class"] and "12.3 dB" in text_of(flagged)
    assert HOSTILE in text_of(flagged)  # shown as text, escaped
    not_comparable = cards["scene-003"].find("p", class_="gd-drift")
    assert "gd-drift-flagged" not in not_comparable["class"]
    assert "not comparable: the seed 7 differs" in text_of(not_comparable)


def test_previews_are_cached_and_made_again_only_when_the_frames_change(failed_run, monkeypatch):
    run_dir, data = failed_run
    first = render_overview(data, run_dir)
    cached = run_dir / "scene-001" / "preview" / "anim.webp"
    if not cached.exists():
        cached = cached.with_suffix(".gif")
    stamp = cached.stat().st_mtime_ns
    opened: list[str] = []
    real_open = Image.open

    def counting_open(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        opened.append(Path(fp).name if isinstance(fp, str | Path) else "?")
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    second = render_overview(data, run_dir)
    assert opened == []  # nothing decoded again: every preview came from the cache
    assert cached.stat().st_mtime_ns == stamp
    strip = lambda markup: [i["src"] for i in parse(markup).find_all("img")]  # noqa: E731
    assert strip(first) == strip(second)
    # a frame more (a retried scene wrote again): the previews are made again
    shutil.copyfile(
        run_dir / "scene-001/generated-frames/frame_00001_.png",
        run_dir / "scene-001/generated-frames/frame_00026_.png",
    )
    third = section(parse(render_overview(data, run_dir)), "gallery")
    assert "frame_00026_.png" in opened  # made again from the frames
    links = third.find("div", attrs={"data-scene": "scene-001"}).find("div", class_="gd-strip").find_all("a")
    assert links[-1]["href"].endswith("frame_00026_.png")


def test_a_frame_that_does_not_decode_is_named_and_the_rest_are_shown(failed_run):
    run_dir, data = failed_run
    frames = run_dir / "scene-003" / "generated-frames"
    (frames / "frame_00025_.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    card = section(parse(render_overview(data, run_dir)), "gallery").find(
        "div", attrs={"data-scene": "scene-003"}
    )
    assert "frame frame_00025_.png could not be decoded" in text_of(card.find("p", class_="gd-warn"))
    assert len(card.find("div", class_="gd-strip").find_all("img")) == 5
    assert card.find("figure", class_="gd-anim") is not None


def test_previews_that_cannot_be_cached_cost_only_the_previews(failed_run, monkeypatch):
    run_dir, data = failed_run
    import pytest_gemdirect.report.previews as previews

    def refuse(path: Path, payload: bytes, *, sync: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(previews, "atomic_write_bytes", refuse)
    soup = parse(render_overview(data, run_dir))
    card = section(soup, "gallery").find("div", attrs={"data-scene": "scene-001"})
    assert "previews could not be made: PermissionError" in text_of(card)
    assert soup.find("div", class_="gd-verdict")["data-status"] == "failed"
    assert len(stage_rows(soup)) == 8


def test_warnings_and_artifacts_say_where_every_file_lies(failed_run):
    run_dir, data = failed_run
    soup = parse(render_overview(data, run_dir))
    warnings = text_of(section(soup, "warnings"))
    assert "cold model load" in warnings
    assert "missing_package: torchaudio is not installed (log line 12)" in warnings
    artifacts = section(soup, "artifacts")
    hrefs = {a["href"] for a in artifacts.find_all("a")}
    assert {
        "run-summary.json",
        "story/story.json",
        "scene-001/generated-frames",
        "scene-003/history.json",
    } <= hrefs
    assert artifacts.find(class_="gd-warn") is None  # every named file exists
    data["artifacts"]["gone"] = "gone/file.txt"
    artifacts = section(parse(render_overview(data, run_dir)), "artifacts")
    row = next(tr for tr in artifacts.find_all("tr") if tr.td and tr.td.get_text() == "gone")
    assert "(missing)" in text_of(row)


def test_suites_section_lists_failing_cases(failed_run):
    run_dir, data = failed_run
    data["suites"] = [
        {
            "name": "vitest",
            "command": "npx vitest run",
            "status": "failed",
            "duration_s": 3.2,
            "totals": {"tests": 3, "passed": 1, "failures": 1, "errors": 0, "skipped": 1},
            "failures": [
                {
                    "name": "adds",
                    "classname": "math",
                    "file": "tests/math.test.js",
                    "line": 7,
                    "message": "expected 3 to be 4",
                    "body": "AssertionError",
                }
            ],
            "failures_total": 1,
            "log": str(run_dir / "suites" / "vitest.log"),
            "junit": None,
        }
    ]
    suites = section(parse(render_overview(data, run_dir)), "suites")
    assert "tests/math.test.js:7" in text_of(suites) and "expected 3 to be 4" in text_of(suites)
    assert suites.find("a")["href"] == "suites/vitest.log"


# --- properties ------------------------------------------------------------------------------------


def assert_self_contained(soup: BeautifulSoup) -> None:
    assert soup.find("script") is None
    assert soup.find("link", rel="stylesheet") is None
    for tag in soup.find_all(True):
        for name, value in tag.attrs.items():
            assert not name.lower().startswith("on"), (tag.name, name)
            if name in ("src", "srcset", "poster", "xlink:href", "data") and tag.name != "object":
                assert str(value).startswith("data:"), (tag.name, name, str(value)[:80])
            if name == "href" and tag.name != "link":
                assert "://" not in value or value.startswith("file://"), value
    for style in soup.find_all("style"):
        css = style.get_text()
        assert "url(" not in css and "@import" not in css and "@font-face" not in css


def test_page_is_one_self_contained_file_with_a_scoped_fragment(failed_run):
    run_dir, data = failed_run
    page = parse(render_page(data, run_dir))
    assert page.find("title").get_text().startswith(f"gemdirect {run_dir.name}: FAILED")
    assert_self_contained(page)
    fragment = parse(render_overview(data, run_dir))
    roots = [child for child in fragment.children if isinstance(child, Tag)]
    assert len(roots) == 1 and roots[0]["class"] == ["gemdirect-report"]
    css = roots[0].find("style").get_text()
    selectors = [rule.split("{")[0] for rule in css.replace("\n", "").split("}") if "{" in rule]
    for group in selectors:
        for selector in group.split(","):
            assert selector.strip().startswith(".gemdirect-report"), selector


def test_report_for_3_scenes_of_25_frames_at_1024x576_stays_under_5_mb(failed_run, tmp_path):
    run_dir, data = failed_run
    data = copy.deepcopy(data)
    for scene in data["scenes"]:  # every scene with frames, the heaviest case
        scene["frames_dir"] = f"{scene['id']}/generated-frames"
        if not (run_dir / scene["frames_dir"]).exists():
            shutil.copytree(run_dir / "scene-001/generated-frames", run_dir / scene["frames_dir"])
        add_video(run_dir, data, scene["id"])  # and its gallery clip, embedded
    report = run_dir / "report.html"
    write_report(report, data, run_dir)
    size = report.stat().st_size
    assert size < SIZE_LIMIT, f"report.html is {size / 1024**2:.2f} MB"
    page = parse(report.read_text(encoding="utf-8"))
    assert len(page.find_all("img")) == 3 * (1 + 1 + 6)
    assert len(page.select("video source[src^='data:video/mp4']")) == 3


def test_everything_from_a_server_a_workflow_or_an_llm_is_escaped(failed_run, frame_bank):
    run_dir, data = failed_run
    data["run_id"] = HOSTILE
    data["status_reason"] = HOSTILE
    data["story"]["title"] = HOSTILE
    data["story"]["scenes"][0].update(
        title=HOSTILE, visual_prompt=HOSTILE, motion_prompt='"><script>alert(1)</script>'
    )
    data["story"]["metadata"]["model"] = HOSTILE
    data["scenes"][0]["title"] = HOSTILE
    failed = data["scenes"][1]
    failed["evidence"]["error"]["exception_message"] = HOSTILE
    failed["evidence"]["error"]["traceback"] = [HOSTILE, "</pre><script>alert(2)</script>"]
    failed["evidence"]["last_messages"].append({"type": HOSTILE})
    failed["evidence"][HOSTILE] = HOSTILE
    data["stages"][4]["items"][1]["message"] = f"scene-002 generation: {HOSTILE}"
    data["settings"]["llm_model"] = HOSTILE
    data["settings"][HOSTILE] = HOSTILE
    data["backends"]["comfyui"]["version"] = HOSTILE
    data["backends"]["comfyui"]["url"] = 'javascript:alert(1)"'
    data["comfyui"]["devices"][0]["name"] = HOSTILE
    data["comfyui"]["startup_warnings"].append({"kind": HOSTILE, "message": HOSTILE, "line_no": 1})
    data["warnings"].append(HOSTILE)
    data["artifacts"][HOSTILE] = "javascript:alert(1)"
    # a frame file named by the server
    frames = run_dir / "scene-001" / "generated-frames"
    (frames / "frame_00001_.png").rename(frames / f"frame_00001_{HOSTILE}.png")
    baseline = copy.deepcopy(data)
    markup = render_page(data, run_dir, baseline=baseline)
    soup = parse(markup)
    assert_self_contained(soup)
    ours = {"gd-keyframe", "gd-anim", "gd-strip"}
    for img in soup.find_all("img"):
        assert img["src"].startswith("data:image/"), img
        assert img.find_parent(class_=lambda c: c in ours) is not None
    assert soup.find_all("script") == []
    text = soup.get_text(" ")
    assert text.count(HOSTILE) >= 12
    assert "<script>alert(2)</script>" in text
    strip = (
        section(soup, "gallery").find("div", attrs={"data-scene": "scene-001"}).find("div", class_="gd-strip")
    )
    first = strip.find("a")
    assert first["title"] == f"frame_00001_{HOSTILE}.png"
    assert (
        first["href"]
        == "scene-001/generated-frames/frame_00001_%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"
    )
    artifact_links = [a["href"] for a in section(soup, "artifacts").find_all("a")]
    assert "javascript:alert(1)" not in artifact_links and "javascript%3Aalert%281%29" in artifact_links


def test_a_partial_or_odd_summary_never_breaks_the_report(tmp_path):
    cases: list[Any] = [
        {},
        {"status": "running", "run_id": "r", "stages": [], "scenes": []},
        {
            "status": "running",
            "stages": None,
            "scenes": None,
            "settings": None,
            "backends": None,
            "story": None,
        },
        {
            "status": "interrupted",
            "stages": [
                {"name": "svd", "status": "failed", "items": [{"key": "svd[scene-001]", "status": "failed"}]}
            ],
            "scenes": [{"id": "scene-001", "telemetry": None, "attempts": None, "frames_dir": "../../etc"}],
            "story": {"scenes": [None, {"id": 3}], "metadata": None},
            "comfyui": {
                "devices": [None, {"vram_total": "lots"}],
                "gpu_samples": [{"t": "garbage"}, None, {"t": 1}],
            },
            "environment": {"gpu": {"gpus": [None]}},
            "suites": [None, {"name": None}],
            "warnings": [None, {"kind": "x"}],
            "artifacts": {"a": None},
        },
    ]
    for data in cases:
        soup = parse(render_page(data, tmp_path, baseline=data))
        assert soup.find("div", class_="gd-verdict") is not None
        assert len(stage_rows(soup)) >= 1
    assert not (tmp_path.parent / "etc" / "preview").exists()
    running = parse(render_overview(cases[1], tmp_path))
    assert "RUNNING" in text_of(running.find("div", class_="gd-verdict"))
    assert "rewritten as the run goes" in text_of(running)
    assert len(stage_rows(running)) == 8  # all eight, not reached yet


def test_the_report_follows_a_live_run_summary_as_it_is_rewritten(tmp_path):
    run = RunDirectory.create(logs_dir=tmp_path, run_dir=tmp_path / "live")
    summary = RunSummary(
        run,
        settings={"scenes": 2, "llm_api_key": "***"},
        sources={"scenes": "default"},
        scene_ids=["scene-001", "scene-002"],
    )

    def report() -> BeautifulSoup:
        write_report(run.report_html, summary.data, run.root)
        return parse(run.report_html.read_text(encoding="utf-8"))

    soup = report()
    assert "RUNNING" in text_of(soup.find("div", class_="gd-verdict"))
    assert {row["data-stage"]: row["class"][1] for row in stage_rows(soup).values()}["env"] == (
        "gd-status-not_reached"
    )
    summary.record_item(StageKey("env"), "passed", duration_s=0.2)
    summary.record_item(
        StageKey("llm"), "failed", duration_s=3.0, message="LLM health: GET /v1/models timed out"
    )
    summary.record_item(StageKey("story"), "not_reached", message="not reached: llm failed")
    soup = report()
    rows = stage_rows(soup)
    assert "✔ passed" in text_of(rows["env"]) and "✘ failed" in text_of(rows["llm"])
    assert "‖ not reached" in text_of(rows["story"]) and "not reached: llm failed" in text_of(rows["story"])
    assert "step 2 (LLM health)" in text_of(soup.find("p", class_="gd-headline"))
    summary.finish("interrupted", "interrupted")
    soup = report()
    assert soup.find("div", class_="gd-verdict")["data-status"] == "interrupted"
    assert [f["data-key"] for f in soup.find_all("div", class_="gd-failure")] == ["llm"]
    assert "llm_timeout" in text_of(soup.find("div", class_="gd-failure"))


def test_the_block_works_inside_pytest_htmls_report(failed_run, pytester):
    run_dir, data = failed_run
    pytester.makeconftest(
        f"""
        import json
        from pathlib import Path
        from pytest_gemdirect.report import render_overview

        RUN = Path({str(run_dir)!r})

        def pytest_html_results_summary(prefix, summary, postfix):
            data = json.loads((RUN / "run-summary.json").read_text(encoding="utf-8"))
            prefix.append(render_overview(data, RUN))
        """
    )
    pytester.makepyfile("def test_one():\n    pass\n")
    html_path = run_dir / "pytest-report.html"
    result = runpytest(pytester, "-p", "no:cacheprovider", f"--html={html_path}", "--self-contained-html")
    result.assert_outcomes(passed=1)
    soup = parse(html_path.read_text(encoding="utf-8"))
    block = soup.select_one("div.additional-summary.prefix > div.gemdirect-report")
    assert block is not None
    assert block.find("div", class_="gd-verdict")["data-status"] == "failed"
    assert len(block.find_all("img")) == 1 + 2 * (1 + 1 + 6)
    assert all(img["src"].startswith("data:image/") for img in block.find_all("img"))


def test_write_report_writes_atomically_with_links_relative_to_the_report(failed_run, tmp_path):
    run_dir, data = failed_run
    elsewhere = tmp_path / "reports" / "night.html"
    write_report(elsewhere, data, run_dir)
    soup = parse(elsewhere.read_text(encoding="utf-8"))
    link = section(soup, "gallery").find("div", class_="gd-strip").find("a")["href"]
    assert (elsewhere.parent / link).resolve() == (
        run_dir / "scene-001/generated-frames/frame_00001_.png"
    ).resolve()
    assert not [p for p in elsewhere.parent.iterdir() if p.name.endswith(".tmp")]


# --- baseline --------------------------------------------------------------------------------------


def test_load_baseline_names_the_file_when_missing_or_invalid(tmp_path, failed_run):
    with pytest.raises(BaselineError, match=r"run-summary\.json does not exist"):
        load_baseline(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run-summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BaselineError, match=rf"{bad.name}.run-summary\.json is not valid JSON"):
        load_baseline(bad)
    (bad / "run-summary.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BaselineError, match="not a gemdirect run summary"):
        load_baseline(bad)
    run_dir, data = failed_run
    assert load_baseline(run_dir)["run_id"] == data["run_id"]
    assert load_baseline(run_dir / "run-summary.json")["run_id"] == data["run_id"]


def test_baseline_shows_changes_and_flags_those_beyond_20_percent(failed_run):
    run_dir, data = failed_run
    baseline = copy.deepcopy(data)
    baseline["run_id"] = "20261128-020000"
    scene = next(s for s in baseline["scenes"] if s["id"] == "scene-001")
    scene["telemetry"]["generation_s"] = 8.0  # now 11.0: +38 %
    scene["telemetry"]["seconds_per_step"] = 0.42  # now 0.44: +5 %
    scene["telemetry"]["vram_free_after"] = 15 * GIB  # peak used 9 GiB then, 13 GiB now: +44 %
    baseline["stages"][3]["duration_s"] = 3.0  # ComfyUI startup, now 3.1: +3 %
    baseline["stages"][2]["duration_s"] = 5.0  # story, now 2.5: -50 %
    soup = parse(render_overview(data, run_dir, baseline=baseline))
    table = section(soup, "baseline")
    cells = {
        (tr["data-group"], td["data-metric"]): td
        for tr in table.find_all("tr", attrs={"data-group": True})
        for td in tr.find_all("td", attrs={"data-metric": True})
    }

    def flagged(group: str, metric: str) -> bool:
        return "gd-flag" in cells[(group, metric)]["class"]

    generation = cells[("scene-001", "generation")]
    assert flagged("scene-001", "generation") and "gd-worse" in generation["class"]
    assert text_of(generation) == "8.00 s → 11.0 s ⚠ +38 %"
    assert flagged("scene-001", "peak VRAM used")
    assert not flagged("scene-001", "seconds per step")
    assert "+5 %" in text_of(cells[("scene-001", "seconds per step")])
    assert not flagged("ComfyUI startup", "duration")
    assert flagged("story", "duration") and "gd-better" in cells[("story", "duration")]["class"]
    assert not flagged("scene-003", "generation") and not flagged("scene-003", "duration")
    assert ("story", "generation") not in cells  # a stage row has its duration only
    assert "3 changes beyond 20 %" in text_of(table.find(class_="gd-flagcount"))
    assert "20261128-020000" in text_of(table)


# --- in a browser ----------------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def real_failed_run(shared_runs: SharedRuns, tmp_path: Path) -> Path:
    """A real run on the embedded stack whose scene-002 fails in generation (no re-queue): a copy of
    the shared FAILED_SCENE run, since the test writes a report into it."""
    run = shared_runs.get(FAILED_SCENE)
    # the stages (scene-002's frames not reached, no suites) and the README's check, not reached there too
    run.result.assert_outcomes(failed=1, passed=9 + 2, skipped=2 + 1)
    return run.copy_to(tmp_path)


def chromium() -> Path | None:
    """Debian's Chromium, or a Chromium/Chrome on PATH (Windows, macOS, other Linux)."""
    if CHROMIUM.exists():
        return CHROMIUM
    found = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "chrome", "msedge") if shutil.which(n)),
        None,
    )
    return Path(found) if found else None


def browser_tools() -> Any:
    if chromium() is None:
        message = "no Chromium found (apt-get install chromium, or a Chrome on PATH)"
        if os.environ.get("CI"):  # CI installs it: missing there is a broken set-up, not a skip
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail(
            "the playwright package is missing: pip install -e '.[dev]' (it drives the system Chromium)"
        )
    return sync_api


def watch(page: Any, problems: list[str]) -> None:
    """Collect JavaScript errors, failed loads and console errors of a page."""
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))


def test_report_of_a_real_run_with_one_failed_scene_opens_in_chromium(real_failed_run, tmp_path):
    sync_api = browser_tools()
    run_dir = real_failed_run
    report = run_dir / "gemdirect-report.html"
    write_report(report, load_baseline(run_dir), run_dir)
    problems: list[str] = []
    screenshot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium()), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            watch(page, problems)
            page.goto(report.as_uri(), wait_until="load")
            verdict = page.locator(".gd-verdict")
            assert verdict.is_visible()
            assert "FAILED" in verdict.inner_text() and "SIMULATED" in verdict.inner_text()
            assert page.locator(".gd-simulated").is_visible()
            failed_row = page.locator('#gd-steps tr.gd-stage.gd-status-failed[data-stage="svd"]')
            assert failed_row.is_visible() and "generation" in failed_row.inner_text()
            assert page.locator(
                '#gd-steps tr.gd-item.gd-status-failed[data-key="svd[scene-002]"]'
            ).is_visible()
            failure = page.locator('#gd-failures .gd-failure[data-key="svd[scene-002]"]')
            assert failure.is_visible()
            seen = failure.inner_text()
            for words in (
                "last progress",
                "server error",
                "OutOfMemoryError",
                "traceback",
                "max_scene_retries = 0",
            ):
                assert words in seen, words
            images = page.locator("#gd-gallery img")
            assert images.count() == 3 + 2 + 2 * 6  # 3 keyframes, 2 previews, 2 strips of 6
            for index in range(images.count()):
                image = images.nth(index)
                image.scroll_into_view_if_needed()
                assert image.is_visible()
                assert image.evaluate("i => i.complete && i.naturalWidth > 0"), image.get_attribute("alt")
            # the passed scenes' clips play in the page and their motion is charted
            assert page.locator("#gd-gallery svg.gd-motion polyline").count() == 2
            videos = page.locator("#gd-gallery video")
            assert videos.count() == 2
            page.wait_for_function(
                "[...document.querySelectorAll('#gd-gallery video')].every(v => v.readyState >= 1)"
            )
            for index in range(videos.count()):
                assert videos.nth(index).evaluate("v => v.duration > 0 && v.videoWidth > 0 && !v.error")
                assert (videos.nth(index).get_attribute("poster") or "").startswith("data:image/")
            # a clip plays offline: its time advances (no spinner stuck at 0:00)
            first = videos.first
            first.evaluate("v => v.play()")
            page.wait_for_function("v => v.currentTime > 0.2 && !v.paused", arg=first.element_handle())
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(screenshot), full_page=True)
            # the run's own report.html (pytest-html, with the run's block) opens cleanly too
            page.goto((run_dir / "report.html").as_uri(), wait_until="load")
            assert page.get_by_text("FAILED", exact=False).first.is_visible()
        finally:
            browser.close()
    assert problems == []
    with Image.open(screenshot) as shot:
        assert shot.width == 1400


def test_the_first_screen_of_a_default_runs_report_shows_verdict_steps_and_gallery(shared_runs, tmp_path):
    """The frames and clips, the point of the run, are on the first screen (1400x1000), not 5000 px down.

    The screenshot is kept as ``first-screen.png`` in the test's temporary folder to look at.
    """
    sync_api = browser_tools()
    run = shared_runs.get(PASSING)  # the default run (with the README's frame check beside the stages)
    run.result.assert_outcomes(passed=11 + 3, skipped=1)
    run_dir = run.run_dir
    screenshot = tmp_path / "first-screen.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium()), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto((run_dir / "report.html").as_uri(), wait_until="load")
            page.screenshot(path=str(screenshot))
            for selector in (".gd-verdict", "#gd-steps", "#gd-gallery .gd-scene-card"):
                box = page.locator(selector).first.bounding_box()
                assert box is not None and box["y"] < 1000, (selector, box)
            # the configuration shows what differs from the defaults; the rest is folded away
            assert page.locator("#gd-config details.gd-defaults").count() == 1
            assert not page.locator("#gd-config details.gd-defaults table").is_visible()
        finally:
            browser.close()
    with Image.open(screenshot) as shot:
        assert shot.size == (1400, 1000)
