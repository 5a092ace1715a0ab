"""The sections of the report below its header, each a function from the page to its rendered block.

A section gathers what its template shows (the facts, rows and pictures) from the typed view; the
template lays it out. Sections are rendered one at a time so that one that fails costs itself only.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from pytest_gemdirect.catalogue import GENERATION, RETRIEVAL, SCENE_STAGES, STAGE_TITLES
from pytest_gemdirect.report import charts, failures, overview
from pytest_gemdirect.report.baseline import CHANGE_THRESHOLD, MEASURES, compare
from pytest_gemdirect.report.format import Fact, facts, first_line, secs, size, word
from pytest_gemdirect.report.links import FileLink, Links, inside
from pytest_gemdirect.report.previews import (
    ANIM_FRAMES,
    ANIM_WIDTH,
    KEYFRAME_WIDTH,
    STRIP_WIDTH,
    Preview,
    scene_preview,
)
from pytest_gemdirect.report.templating import render
from pytest_gemdirect.report.video_view import DriftView, VideoView
from pytest_gemdirect.report.view import RunView, SceneView, SuiteView, WarningView


@dataclass(frozen=True)
class Page:
    """What every section may draw on: the run's view, its links and the baseline (if any)."""

    view: RunView
    links: Links  # and through them the run directory
    baseline: Mapping[str, Any] | None


def steps(page: Page) -> Markup:
    return render("steps.html.j2", rows=overview.step_rows(page.view), checks=page.view.checks)


def what_went_wrong(page: Page) -> Markup:
    blocks = [failures.failure(node, page.view, page.links) for node in failures.wrong_nodes(page.view.nodes)]
    return render("failures.html.j2", failures=blocks, nothing=failures.nothing_wrong(page.view))


def backends(page: Page) -> Markup:
    view = page.view
    comfy, env = view.comfyui, view.environment
    comfy_facts = facts(
        Fact("version", comfy.version),
        Fact("Python", comfy.python),
        Fact("PyTorch", comfy.pytorch),
        Fact("workflow", comfy.workflow),
        Fact("workflow hash", comfy.workflow_hash, code=True),
        Fact("node classes", comfy.node_classes),
    )
    machine = facts(
        Fact("Python", env.python),
        Fact("platform", env.platform),
        Fact("Node / npm", " / ".join(v for v in (env.node, env.npm) if v)),
        Fact("disk free", size(env.disk_free_bytes)),
        Fact("packages", ", ".join(f"{k} {v}" for k, v in env.packages)),
        Fact("harness", view.harness_version),
    )
    llm = facts(*(Fact(label, text) for label, text in view.llm.facts))
    return render(
        "backends.html.j2", view=view, links=page.links, comfy=comfy_facts, llm=llm, machine=machine
    )


def configuration(page: Page) -> Markup:
    """The settings that differ from their defaults; the rest folded away behind a <details>."""
    settings = list(page.view.settings.values())
    changed = [s for s in settings if s.source and s.source != "default"]
    return render("config.html.j2", changed=changed, defaults=[s for s in settings if s not in changed])


@dataclass(frozen=True)
class SceneTimes:
    id: str
    status: str
    figures: tuple[str, ...]  # queue wait … frames, as shown


def timings(page: Page) -> Markup:
    view = page.view
    by_stage = {node.stage: node for node in view.nodes}
    scenes = []
    for scene in view.scenes:
        durations = {
            stage: next((i.duration_s for i in by_stage[stage].items if i.scene == scene.id), None)
            for stage in SCENE_STAGES
            if stage in by_stage
        }
        tele = scene.telemetry
        spp = tele.seconds_per_step
        figures = (
            secs(tele.queue_wait_s),
            secs(tele.generation_s),
            secs(tele.retrieval_s),
            f"{spp:.3f} s" if spp is not None else "",
            str(tele.steps) if tele.steps is not None else "",
            secs(durations.get(GENERATION)),
            secs(durations.get(RETRIEVAL)),
            str(len(scene.attempts)),
            str(scene.frame_count),
        )
        scenes.append(SceneTimes(scene.id, scene.status, figures))
    return render(
        "timings.html.j2",
        timeline=charts.timeline(view),
        nodes=view.nodes,
        titles=STAGE_TITLES,
        scenes=scenes,
        total=secs(view.duration_s),
    )


def against_baseline(page: Page) -> Markup:
    assert page.baseline is not None
    comparison = compare(page.view, page.baseline)
    measures = [label for label, _ in MEASURES]
    return render(
        "baseline.html.j2", c=comparison, measures=measures, threshold=f"{CHANGE_THRESHOLD * 100:.0f} %"
    )


def gpu(page: Page) -> Markup:
    view = page.view
    vram_rows = []
    for scene in view.scenes:
        before, after = scene.telemetry.vram_free_before, scene.telemetry.vram_free_after
        peak = view.peak_vram_used(scene)
        if before is None and after is None and peak is None:
            continue
        vram_rows.append((scene.id, size(before), size(after), _taken(before, after), size(peak)))
    notes = sorted({s.record.gpu_note for s in view.scenes if s.record.gpu_note})
    return render(
        "gpu.html.j2",
        devices=view.comfyui.devices,
        env=view.environment,
        vram_rows=vram_rows,
        notes=notes,
        chart=charts.vram_chart(view),
    )


def _taken(free_before: float | None, free_after: float | None) -> str:
    """What the scene took, never negative: scenes overlap in a pool, so free VRAM may grow."""
    if free_before is None or free_after is None:
        return size(None)
    if free_after > free_before:
        return f"none seen ({size(free_after - free_before)} freed meanwhile)"
    return size(free_before - free_after)


def story(page: Page) -> Markup:
    view = page.view
    head: list[Fact] = []
    if view.story is not None:
        head = facts(
            Fact("title", view.story.title),
            Fact("logline", view.story.logline),
            Fact("file", link=page.links.file(view.story.path)),
            *(Fact(label, text) for label, text in view.story.metadata),
        )
    return render("story.html.j2", story=view.story, story_facts=head, view=view)


CLIP_EMBED_BUDGET = 1_500_000
"""Bytes of gallery clips embedded in the report (a third more as base64); the clips past it are linked."""


@dataclass(frozen=True)
class SceneCard:
    id: str
    status: str
    title: str | None
    preview: Preview
    anim_frames: int  # the frames the animated preview shows
    keyframe_href: str | None
    strip_hrefs: tuple[str, ...]
    frames: FileLink | None
    no_frames: str  # why there are none, when there are none
    clip_src: str | None = None  # the gallery clip as a data: URI, when it fits the budget
    clip_link: FileLink | None = None
    motion: charts.MotionChart | None = None
    video_facts: str = ""
    video_problems: tuple[str, ...] = ()
    source_note: str = ""
    drift: DriftView | None = None
    drift_text: str = ""
    server: str | None = None  # the ComfyUI server that ran it
    keyframe_end_href: str | None = None  # bookend mode: the end keyframe


class _ClipBudget:
    """Embeds clips while the budget lasts, in scene order; a clip past it is linked instead."""

    def __init__(self, links: Links, budget: int | None = None) -> None:
        self.links = links
        self.left = CLIP_EMBED_BUDGET if budget is None else budget

    def data_uri(self, rel: str | None) -> str | None:
        path = inside(self.links.run_root, rel)
        try:
            if path is None or not path.is_file() or path.stat().st_size > self.left:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        self.left -= len(data)
        return "data:video/mp4;base64," + base64.b64encode(data).decode("ascii")


def _video_facts(video: VideoView) -> str:
    shape = ", ".join(
        part
        for part in (
            f"{video.frame_count} frames" if video.frame_count is not None else "",
            video.size,
            " ".join(x for x in (video.codec, video.container) if x),
            f"{video.fps:g} fps" if video.fps else "",
            f"{video.duration_s:.2f} s" if video.duration_s else "",
        )
        if part
    )
    figures = [f"motion {video.motion:.2f}" if video.motion is not None else "motion not measured"]
    if video.black_frames:
        figures.append("black frames " + ", ".join(map(str, video.black_frames[:20])))
    if video.flat_frames:
        figures.append("flat frames " + ", ".join(map(str, video.flat_frames[:20])))
    return f"Decoded: {shape}; " + "; ".join(figures) + "."


def _drift_text(drift: DriftView) -> str:
    if not drift.comparable:
        return f"Against the baseline: {drift.reason or 'not comparable'}"
    if drift.flagged:
        return f"⚠ Drift against the baseline: {drift.message}"
    if drift.identical:
        return "Against the baseline: every frame identical."
    low = f"{drift.min_psnr:.1f} dB" if drift.min_psnr is not None else "—"
    tolerance = f" (tolerance {drift.tolerance:g} dB)" if drift.tolerance is not None else ""
    return f"Against the baseline: lowest PSNR {low}{tolerance}, not flagged."


def _min_motion(page: Page) -> float | None:
    setting = page.view.settings.get("min_motion")
    try:
        return float(setting.shown) if setting is not None else None
    except ValueError:
        return None


def _video_fields(scene: SceneView, page: Page, clips: _ClipBudget) -> dict[str, Any]:
    """The card's clip, motion chart, figures, problems and drift (nothing when not recorded)."""
    fields: dict[str, Any] = {}
    video = scene.video
    if video is not None:
        fields.update(
            clip_src=clips.data_uri(video.clip),
            clip_link=page.links.file(video.clip),
            motion=charts.motion_chart(video.motion_series, _min_motion(page), video.motion),
            video_facts=_video_facts(video),
            video_problems=video.problems,
            source_note=video.source_note,
        )
    if scene.drift is not None:
        fields.update(drift=scene.drift, drift_text=_drift_text(scene.drift))
    return fields


def gallery(page: Page) -> Markup:
    cards = []
    clips = _ClipBudget(page.links)
    for scene in page.view.scenes:
        try:
            preview = scene_preview(
                page.links.run_root,
                scene.id,
                scene.files.get("keyframe"),
                scene.frames_dir,
                keyframe_end_rel=scene.files.get("keyframe_end"),
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a read-only run directory: the report goes on without previews
            preview = Preview(problems=[f"previews could not be made: {type(exc).__name__}: {exc}"])
        story_scene = page.view.story_scene(scene.id)
        if scene.status in ("failed", "not_reached"):
            no_frames = f"No frames: {first_line(scene.message) or word(scene.status)}"
        else:
            no_frames = "No frames yet."
        cards.append(
            SceneCard(
                id=scene.id,
                status=scene.status,
                title=scene.title or (story_scene.title if story_scene else None) or None,
                preview=preview,
                anim_frames=min(preview.frames_total, ANIM_FRAMES),
                keyframe_href=page.links.href(preview.keyframe_rel),
                keyframe_end_href=page.links.href(preview.keyframe_end_rel),
                strip_hrefs=tuple(page.links.href(t.rel) or "" for t in preview.strip),
                frames=page.links.file(scene.frames_dir),
                no_frames=no_frames,
                server=scene.server,
                **_video_fields(scene, page, clips),
            )
        )
    sizes = {"keyframe": KEYFRAME_WIDTH, "anim": ANIM_WIDTH, "strip": STRIP_WIDTH}
    return render("gallery.html.j2", cards=cards, sizes=sizes)


@dataclass(frozen=True)
class SuiteBlock:
    suite: SuiteView
    duration: str
    totals: str  # "3 tests, 1 passed, …"
    not_shown: int  # failing cases beyond those recorded


def suites(page: Page) -> Markup:
    if not page.view.suites:
        return Markup("")
    blocks = []
    for suite in page.view.suites:
        keys = ("tests", "passed", "failures", "errors", "skipped")
        totals = ", ".join(f"{suite.totals[k]} {k}" for k in keys if k in suite.totals)
        recorded = len(suite.failures)
        more = (
            int(suite.failures_total) - recorded
            if suite.failures_total and suite.failures_total > recorded
            else 0
        )
        blocks.append(SuiteBlock(suite, secs(suite.duration_s), totals, more))
    return render("suites.html.j2", blocks=blocks, links=page.links)


def warnings(page: Page) -> Markup:
    comfy = page.view.comfyui
    groups: list[tuple[str, tuple[WarningView, ...]]] = [
        ("run", page.view.warnings),
        ("ComfyUI startup log", comfy.startup_warnings),
        ("workflow preflight", comfy.preflight_problems),
    ]
    return render("warnings.html.j2", groups=[(label, items) for label, items in groups if items])


@dataclass(frozen=True)
class Artifact:
    name: str
    link: FileLink | None
    missing: bool


def artifacts(page: Page) -> Markup:
    view, links = page.view, page.links
    entries: list[tuple[str, str | None]] = [
        ("run summary (JSON)", "run-summary.json"),
        ("run summary (text)", "run-summary.txt"),
        ("this report", "report.html"),
    ]
    entries += list(view.artifacts)
    entries += [(f"{b.name} log", b.log) for b in view.backends if b.log]
    for suite in view.suites:
        entries += [(f"suite {suite.name} log", suite.log), (f"suite {suite.name} JUnit", suite.junit)]
    for scene in view.scenes:
        entries += [(f"{scene.id} {key}", path) for key, path in sorted(scene.files.items())]
        if scene.frames_dir:
            entries.append((f"{scene.id} frames ({scene.frame_count})", scene.frames_dir))
    rows, seen = [], set()
    for name, path in entries:
        if not path or (name, path) in seen:
            continue
        seen.add((name, path))
        missing = links.exists(path) is False and path != "report.html"  # being written right now
        rows.append(Artifact(name, links.file(path), missing))
    return render("artifacts.html.j2", rows=rows, run_dir=view.run_dir or str(links.run_root))
