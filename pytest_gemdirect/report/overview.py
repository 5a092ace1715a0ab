"""The top of the report, read in ten seconds: the verdict, the first failure, and the step table.

Each step's row carries one line of evidence: its message when it has one, else the facts it
produced (the model that answered, the frames that came back), so that a green row says *why* it is
green too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pytest_gemdirect.catalogue import GENERATION, RETRIEVAL, SCENE_STAGES, STAGE_TITLES
from pytest_gemdirect.report.failures import LookAt, look_next, step_number, wrong_nodes
from pytest_gemdirect.report.format import first_line, mark, plural, secs
from pytest_gemdirect.report.links import Links
from pytest_gemdirect.report.view import Node, RunView


@dataclass(frozen=True)
class FirstFailure:
    where: str
    message: str
    more: str  # " — and 2 more failures"
    look_next: tuple[LookAt, ...]


@dataclass(frozen=True)
class Header:
    run_id: str
    status: str
    mark: str
    verdict: str
    simulated: str | None  # the simulated backends, named
    replayed: str  # "REPLAYED from run …" when the servers were a recording
    first_failure: FirstFailure | None
    progress: str | None  # while the run goes
    meta: str
    run_dir: str


@dataclass(frozen=True)
class StepRow:
    stage: str
    key: str
    number: int | None  # a stage's number; ``None`` for its items
    label: str
    status: str
    reason: str  # why it was skipped
    duration: str
    evidence: str


def header(view: RunView, links: Links) -> Header:
    status = view.status
    simulated = [b.name for b in view.backends if b.simulated]
    first = None
    wrong = wrong_nodes(view.nodes)
    if wrong:
        node = wrong[0]
        where = f"step {step_number(node.stage)} ({STAGE_TITLES.get(node.stage, node.stage)})"
        where += f", {node.scene}" if node.scene else ""
        more = f" — and {plural(len(wrong) - 1, 'more failure')}" if len(wrong) > 1 else ""
        first = FirstFailure(where, _without_scene(node), more, tuple(look_next(node, view, links)[:3]))
    done = sum(1 for n in view.nodes if n.status != "not_reached")
    written = datetime.now().astimezone().isoformat(timespec="seconds")
    meta = [
        f"started {view.started_at}" if view.started_at else "",
        f"finished {view.finished_at}" if view.finished_at else "",
        f"took {secs(view.duration_s)}" if view.duration_s is not None else "",
        f"report written {written}" + (" (rewritten as the run goes)" if status == "running" else ""),
    ]
    return Header(
        run_id=view.run_id,
        status=status,
        mark=mark({"passed": "passed", "failed": "failed", "interrupted": "failed"}.get(status, "running")),
        verdict=view.verdict,
        simulated=(", ".join(simulated) or "a backend") if view.simulated or simulated else None,
        replayed=view.replayed,
        first_failure=first,
        progress=f"Running: {done} of {len(view.nodes)} steps have a result so far."
        if not wrong and status == "running"
        else None,
        meta=" · ".join(m for m in meta if m),
        run_dir=view.run_dir,
    )


def _without_scene(node: Node) -> str:
    """The first line of a node's message without the scene id it starts with (said already)."""
    line = first_line(node.message, 240)
    if node.scene and line.startswith(node.scene + " "):
        line = line[len(node.scene) + 1 :]
    return line


def step_rows(view: RunView) -> list[StepRow]:
    rows = []
    for number, node in enumerate(view.nodes, start=1):
        reason = f" ({first_line(node.message, 120)})" if node.status == "skipped" and node.message else ""
        title = STAGE_TITLES.get(node.stage, node.stage)
        rows.append(
            StepRow(
                node.stage,
                node.key,
                number,
                title,
                node.status,
                reason,
                secs(node.duration_s),
                evidence_line(node, view),
            )
        )
        for item in node.items:
            label = item.scene or item.key
            rows.append(
                StepRow(
                    node.stage,
                    item.key,
                    None,
                    label,
                    item.status,
                    "",
                    secs(item.duration_s),
                    evidence_line(item, view),
                )
            )
    return rows


def evidence_line(node: Node, view: RunView) -> str:
    """One line of evidence for a stage (or a scene's node): its message, else the facts it produced."""
    if node.message:
        return first_line(node.message)
    if node.status != "passed":
        return ""
    if node.stage in SCENE_STAGES and node.scene:
        return _scene_line(node, view)
    said = {
        "env": _environment_line,
        "llm": _llm_line,
        "story": _story_line,
        "comfyui": _comfyui_line,
        GENERATION: _scenes_line,
        RETRIEVAL: _scenes_line,
        "suites": _suite_line,
    }.get(node.stage)
    if said is not None:
        return said(node, view)
    return "run-summary.json valid, every named file present" if node.stage == "summary" else ""


def _scene_line(node: Node, view: RunView) -> str:
    scene = view.scene(node.scene)
    if scene is None:
        return "0 frames in" if node.stage == RETRIEVAL else ""
    if node.stage == RETRIEVAL:
        return f"{scene.frame_count} frames in {scene.frames_dir or ''}".strip()
    tele = scene.telemetry
    bits = [f"prompt {scene.prompt_id}" if scene.prompt_id else ""]
    bits.append(f"on {scene.server}" if scene.server else "")
    bits.append(f"{tele.steps} steps" if tele.steps else "")
    bits.append(f"{tele.seconds_per_step:.2f} s/step" if tele.seconds_per_step is not None else "")
    bits.append(plural(len(scene.attempts), "attempt") if scene.attempts else "")
    return ", ".join(b for b in bits if b)


def _environment_line(node: Node, view: RunView) -> str:
    env = view.environment
    gpus = ", ".join(g.name for g in env.gpus if g.name)
    facts = [f"Python {env.python}" if env.python else "", env.platform]
    no_gpu = "no GPU visible to this machine"
    if view.simulated:
        no_gpu += " (ComfyUI's GPU is simulated)"
    facts.append(f"GPU {gpus}" if gpus else (no_gpu if env.gpu_recorded else ""))
    return ", ".join(f for f in facts if f)


def _llm_line(node: Node, view: RunView) -> str:
    llm = view.llm
    bits = [
        f"model {llm.model}" if llm.model else "",
        f"answered in {secs(llm.latency_s)}" if llm.latency_s is not None else "",
    ]
    return ", ".join(b for b in bits if b)


def _story_line(node: Node, view: RunView) -> str:
    story = view.story
    if story is None:
        return ""
    count = len(story.scenes)
    bits = [f"{count} scenes" if count else "", f"mode {story.mode}" if story.mode else ""]
    bits.append(f"“{story.title}”" if story.title else "")
    return ", ".join(b for b in bits if b)


def _comfyui_line(node: Node, view: RunView) -> str:
    comfy = view.comfyui
    names = ", ".join(d.name for d in comfy.devices if d.name)
    head = [
        f"ComfyUI {comfy.version}" if comfy.version else "ComfyUI",
        f"at {comfy.url}" if comfy.url else "",
    ]
    tail = [names, f"{comfy.node_classes} node classes" if comfy.node_classes else ""]
    return " ".join(b for b in head if b) + "".join(f", {b}" for b in tail if b)


def _scenes_line(node: Node, view: RunView) -> str:
    done = sum(1 for i in node.items if i.status == "passed")
    frames = sum(s.frame_count for s in view.scenes)
    return f"{done}/{len(node.items)} scenes" + (f", {frames} frames" if node.stage == RETRIEVAL else "")


def _suite_line(node: Node, view: RunView) -> str:
    suite = view.suite(node.scene) if node.scene else None
    if suite is None or not suite.totals:
        return ""
    passed, skipped, tests = (suite.totals.get(k, "0") for k in ("passed", "skipped", "tests"))
    return f"{passed} passed, {skipped} skipped of {tests}"
