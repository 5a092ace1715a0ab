"""What went wrong, in plain words: where, what was expected, what was seen, what bounded it, where to look.

A failure is a node (a stage, or a scene's generation or retrieval) whose status is in
``summary.WRONG``. Its block answers the questions a reader has in order, so that nobody has to
open run-summary.json to learn which setting to change or which file to read next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_gemdirect.catalogue import BY_NAME, SCENE_STAGES, STAGE_TITLES
from pytest_gemdirect.report.evidence import EvidenceRow
from pytest_gemdirect.report.format import mark
from pytest_gemdirect.report.links import SCENE_ID, FileLink, Links
from pytest_gemdirect.report.view import Attempt, Node, RunView, SceneView
from pytest_gemdirect.summary import WRONG
from pytest_gemdirect.text import visible


@dataclass(frozen=True)
class SettingLine:
    """``name = value (where it came from; the flag that changes it)``."""

    name: str
    shown: str
    how: str


@dataclass(frozen=True)
class LookAt:
    label: str
    link: FileLink


@dataclass(frozen=True)
class Failure:
    stage: str
    key: str
    mark: str
    where: str
    title: str | None
    expected: str
    message: str
    attempts: tuple[Attempt, ...]
    evidence: tuple[EvidenceRow, ...]
    last_progress: str | None  # from scene.json, when the evidence does not say
    bounded_by: tuple[SettingLine, ...]
    other_limits: tuple[SettingLine, ...]
    look_next: tuple[LookAt, ...]


def wrong_nodes(nodes: tuple[Node, ...]) -> list[Node]:
    """The failed or interrupted nodes: a stage's items when they say it, else the stage itself."""
    found: list[Node] = []
    for node in nodes:
        if node.items:
            found += [item for item in node.items if item.status in WRONG]
            if node.status in WRONG and not any(i.status in WRONG for i in node.items):
                found.append(node)
        elif node.status in WRONG:
            found.append(node)
    return found


def step_number(stage: str) -> str:
    return str(BY_NAME[stage].number) if stage in BY_NAME else "?"


def setting_line(view: RunView, name: str) -> SettingLine | None:
    setting = view.settings.get(name)
    if setting is None:
        return None
    source = setting.source
    flag = "--" + name.replace("_", "-")
    if source and source != "default":
        how = source if flag in source else f"{source}; flag {flag}"
    else:
        how = f"{source + '; ' if source else ''}change with {flag}"
    return SettingLine(name, setting.shown, how)


def bounding_settings(node: Node, scene: SceneView | None, view: RunView) -> tuple[list[str], list[str]]:
    """(settings named by the failure, the other settings that bound this stage)."""
    evidence = scene.evidence if scene else None
    named: list[str] = []
    for name in evidence.named_settings if evidence else ():
        if name in view.settings and name not in named:
            named.append(name)
    # the failure's own words (the policy the job ran under names every limit, so it is left out)
    text = (node.message or "") + " " + (evidence.said if evidence else "{}")
    for name in view.settings:
        if name in named:
            continue
        flag = "--" + name.replace("_", "-")
        if re.search(rf"(?<![\w-]){re.escape(name)}(?!\w)", text) or re.search(
            rf"{re.escape(flag)}(?![\w-])", text
        ):
            named.append(name)
    others = [
        n
        for n in (BY_NAME[node.stage].bounded_by if node.stage in BY_NAME else ())
        if n in view.settings and n not in named
    ]
    return named, others


def look_next(node: Node, view: RunView, links: Links) -> list[LookAt]:
    """The files to read next for this failure, those that exist, most specific first."""
    files: list[tuple[str, str | None]] = []
    scene = view.scene(node.scene)
    if node.stage in SCENE_STAGES and scene is not None and SCENE_ID.match(scene.id):
        sid = scene.id
        for label, key, fallback in (
            ("WebSocket and poll events", "events", f"{sid}/events.jsonl"),
            ("history from ComfyUI", "history", f"{sid}/history.json"),
            ("scene record", "scene", f"{sid}/scene.json"),
            ("queued workflow", "workflow", f"{sid}/workflow.json"),
        ):
            recorded = scene.files.get(key) or fallback
            if links.exists(recorded):
                files.append((label, recorded))
    backends = {b.name: b for b in view.backends}
    if node.stage in (*SCENE_STAGES, "comfyui") and "comfyui" in backends:
        files.append(("ComfyUI log", backends["comfyui"].log))
    if node.stage in ("llm", "story") and "llm" in backends:
        files.append(("LLM server log", backends["llm"].log))
    suite = view.suite(node.scene) if node.stage == "suites" else None
    if suite is not None:
        files += [("suite log", suite.log), ("JUnit XML", suite.junit)]
    if node.stage == "story" and view.story is not None:
        files.append(("story", view.story.path))
    files.append(("run summary", "run-summary.json"))
    found = []
    for label, path in files:
        link = links.file(path)
        if link is not None and links.exists(path) is not False:
            found.append(LookAt(label, link))
    return found


def failure(node: Node, view: RunView, links: Links) -> Failure:
    scene = view.scene(node.scene) if node.stage in SCENE_STAGES else None
    where = f"step {step_number(node.stage)}, {STAGE_TITLES.get(node.stage, node.stage)}"
    if node.scene:
        where += f", {node.scene}"
    story_scene = view.story_scene(node.scene)
    title = (scene.title if scene else None) or (story_scene.title if story_scene else None) or None
    evidence = scene.evidence if scene else None
    progress = scene.record.last_progress if scene else None
    named, others = bounding_settings(node, scene, view)
    return Failure(
        stage=node.stage,
        key=node.key,
        mark=mark("interrupted" if node.status == "interrupted" else "failed"),
        where=where,
        title=title,
        expected=BY_NAME[node.stage].expected if node.stage in BY_NAME else "the stage's check to pass",
        message=node.message or "(no message recorded)",
        attempts=scene.attempts if scene else (),
        evidence=evidence.rows if evidence else (),
        last_progress=progress if not (evidence and evidence.has_progress) else None,
        bounded_by=tuple(line for name in named if (line := setting_line(view, name))),
        other_limits=tuple(line for name in others if (line := setting_line(view, name))),
        look_next=tuple(look_next(node, view, links)),
    )


def nothing_wrong(view: RunView) -> str:
    """What the section says when no node failed."""
    reason = view.status_reason or "no reason recorded"
    if view.status == "interrupted":
        return f"The run was interrupted: {reason}."
    failed_checks = [c for c in view.checks if c.status == "failed"]
    if view.status == "failed" and failed_checks:
        said = "; ".join(f"{c.test}: {visible(c.message)}" for c in failed_checks)
        return f"Every step passed, but your own checks failed: {said}."
    if view.status == "failed":
        return f"The run failed without a failed step: {reason}."
    if view.status == "running":
        return "Nothing has failed so far; the run is still going."
    return "Nothing went wrong."
