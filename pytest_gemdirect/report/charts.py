"""The two pictures of the report, as geometry for the SVG templates: the timeline and VRAM over the run.

Everything here is numbers and labels; ``timeline.svg.j2`` and ``vram.svg.j2`` draw them (and
escape the labels, which name scenes and stages). Both share one clock: the stages' measured
durations laid end to end in the order the run took them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pytest_gemdirect.catalogue import GENERATION, SCENE_STAGES, STAGE_TITLES
from pytest_gemdirect.report.format import secs, short, size, word
from pytest_gemdirect.report.view import Node, RunView

COLOURS = {
    "passed": "#2e8b57",
    "failed": "#c62828",
    "skipped": "#9e9e9e",
    "not_reached": "#bdbdbd",
    "running": "#f9a825",
    "interrupted": "#6d4c41",
    "deselected": "#e0e0e0",
}
WIDTH = 960


def nice_step(span: float, ticks: int = 6) -> float:
    """A round step (1, 2 or 5 times a power of ten) that cuts ``span`` into about ``ticks`` parts."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


# --- the run's clock ----------------------------------------------------------------------------------


@dataclass
class Bar:
    lane: str  # stage name
    key: str
    status: str
    start: float
    duration: float
    parts: list[tuple[str, float]] = field(default_factory=list)  # (label, seconds) inside the bar
    scene: str | None = None


def run_order(nodes: tuple[Node, ...]) -> list[Node]:
    """Stage nodes in the order the pipeline runs them: each scene's retrieval after its generation."""
    by_stage = {node.stage: node for node in nodes}
    ordered: list[Node] = []
    scenes_added = False
    for node in nodes:
        if node.stage in SCENE_STAGES:
            if not scenes_added:
                ordered += _scene_nodes(by_stage)
                scenes_added = True
            continue
        ordered += node.items or [node]
    return ordered


def _scene_nodes(by_stage: dict[str, Node]) -> list[Node]:
    stages = [by_stage[name] for name in SCENE_STAGES if name in by_stage]
    nodes: list[Node] = []
    for scene in sorted({i.scene for stage in stages for i in stage.items if i.scene}):
        for stage in stages:
            nodes += [i for i in stage.items if i.scene == scene]
    nodes += [stage for stage in stages if not stage.items]
    return nodes


def bars(view: RunView) -> list[Bar]:
    """Every node as a bar on the run's clock; a generation bar shows its queue wait inside it."""
    found, clock = [], 0.0
    for node in run_order(view.nodes):
        duration = node.duration_s or 0.0
        bar = Bar(node.stage, node.key, node.status, clock, duration, scene=node.scene)
        scene = view.scene(node.scene)
        if node.stage == GENERATION and duration and scene is not None:
            queue, gen = scene.telemetry.queue_wait_s, scene.telemetry.generation_s
            if queue is not None and gen is not None and queue + gen <= duration * 1.05:
                bar.parts = [("queue wait", queue), ("generation", gen)]
        found.append(bar)
        clock += duration
    return found


# --- the timeline ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    x: str
    y: str
    text: str


@dataclass(frozen=True)
class BarShape:
    tip: str
    x: str
    y: int
    width: str
    height: int
    colour: str
    queue_width: str | None  # the lighter part: the queue wait
    label: Label | None  # the scene's id, when the bar is wide enough for it


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    top: int
    axis_y: int
    ticks: tuple[Label, ...]
    lanes: tuple[Label, ...]
    bars: tuple[BarShape, ...]


def timeline(view: RunView) -> Timeline | None:
    """The nodes as bars on one lane per stage (``None`` while no stage has a measured duration)."""
    found = bars(view)
    total = sum(b.duration for b in found)
    if not found or total <= 0:
        return None
    lanes = [node.stage for node in view.nodes]
    label_w, lane_h, top = 150, 22, 8
    scale = (WIDTH - label_w - 20) / total
    axis_y = top + lane_h * len(lanes) + 4
    ticks, step, t = [], nice_step(total), 0.0
    while t <= total + 1e-9:
        ticks.append(Label(short(label_w + t * scale), str(axis_y + 14), f"{short(t)} s"))
        t += step
    lane_labels = [
        Label(str(label_w - 8), str(top + lane * lane_h + 15), STAGE_TITLES.get(stage, stage))
        for lane, stage in enumerate(lanes)
    ]
    shapes = []
    for bar in found:
        if bar.lane not in lanes:
            continue
        y = top + lanes.index(bar.lane) * lane_h + 3
        x = label_w + bar.start * scale
        w = max(bar.duration * scale, 1.5)
        tip = f"{bar.key}: {word(bar.status)}, {secs(bar.duration) or '0 s'}"
        if bar.parts:
            tip += " (" + ", ".join(f"{label} {secs(v)}" for label, v in bar.parts) + ")"
        queue = short(bar.parts[0][1] * scale) if bar.parts and bar.parts[0][1] > 0 else None
        label = Label(short(x + 3), str(y + 12), bar.scene) if bar.scene and w > 44 else None
        colour = COLOURS.get(bar.status, "#bdbdbd")
        shapes.append(BarShape(tip, short(x), y, short(w), lane_h - 6, colour, queue, label))
    height = top + lane_h * len(lanes) + 34
    return Timeline(WIDTH, height, top, axis_y, tuple(ticks), tuple(lane_labels), tuple(shapes))


# --- VRAM over the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A horizontal line across the plot at ``y``, labelled at (``text_x``, ``text_y``)."""

    y: str
    text_x: int
    text_y: str
    text: str


@dataclass(frozen=True)
class Dot:
    x: str
    y: str
    tip: str


@dataclass(frozen=True)
class VramChart:
    width: int
    height: int
    left: int
    right_x: int  # the plot's right edge
    top: int
    bottom_y: int  # the plot's bottom edge
    grid: tuple[Rule, ...]  # a step of memory
    ticks: tuple[Label, ...]  # seconds under the plot
    total: Rule | None  # the device's memory: a dashed line
    memory: str  # polyline points
    dots: tuple[Dot, ...]
    util: str  # polyline points of the utilisation, on the right axis
    legend: str


def _sample_series(
    view: RunView,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], float | None]:
    """(seconds, MiB used), (seconds, utilisation %) and the total MiB from the GPU samples.

    Run-wide samples (``comfyui.gpu_samples``) when recorded; else each scene's samples from its
    scene.json, placed at its generation bar on the timeline's clock.
    """
    placed = [(0.0, s) for s in view.comfyui.gpu_samples]
    if not view.comfyui.gpu_samples_recorded:
        for bar in bars(view):
            scene = view.scene(bar.scene) if bar.lane == GENERATION and bar.scene else None
            placed += [(bar.start, s) for s in scene.record.gpu_samples] if scene else []
    memory = [(at + s.t, s.used_mib) for at, s in placed if s.used_mib is not None]
    util = [(at + s.t, s.util_pct) for at, s in placed if s.util_pct is not None]
    totals = [s.total_mib for _, s in placed if s.total_mib]
    return memory, util, (max(totals) if totals else None)


def _scene_vram_series(view: RunView) -> list[tuple[float, float, str]]:
    """(seconds on the timeline, MiB used, label) before and after each scene's generation."""
    total = view.vram_total
    if total is None:
        return []
    points = []
    for bar in bars(view):
        scene = view.scene(bar.scene) if bar.lane == GENERATION and bar.scene else None
        if scene is None:
            continue
        before, after = scene.telemetry.vram_free_before, scene.telemetry.vram_free_after
        if before is not None:
            points.append((bar.start, (total - before) / 1024**2, f"{bar.scene} before"))
        if after is not None:
            points.append((bar.start + bar.duration, (total - after) / 1024**2, f"{bar.scene} after"))
    return points


def vram_chart(view: RunView) -> VramChart | None:
    """VRAM used (and GPU utilisation) over the run (``None`` when no figure was recorded)."""
    memory, util, sampled_total = _sample_series(view)
    source = "nvidia-smi samples while the scenes ran, on the timeline's clock"
    labelled: list[tuple[float, float, str]] = [(t, v, "") for t, v in memory]
    if not memory:
        labelled = _scene_vram_series(view)
        source = "read from ComfyUI's /system_stats before and after each scene (the timeline's clock)"
    if not labelled and not util:
        return None
    height, left, right, top, bottom = 220, 70, 50, 12, 30
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    xs = [t for t, _, _ in labelled] + [t for t, _ in util]
    t0, t1 = min(xs), max(xs)
    span = (t1 - t0) or 1.0
    total_mib = sampled_total or (view.vram_total or 0) / 1024**2
    top_mib = max([v for _, v, _ in labelled] + [total_mib, 1.0])
    in_gib = top_mib >= 1024
    ystep = nice_step(top_mib / 1024, 4) * 1024 if in_gib else nice_step(top_mib, 4)
    top_mib = math.ceil(top_mib / ystep - 1e-9) * ystep

    def x_of(t: float) -> str:
        return short(left + (t - t0) / span * plot_w)

    def y_of(mib: float) -> float:
        return top + plot_h - mib / top_mib * plot_h

    grid, mib = [], 0.0
    while mib <= top_mib + 1e-9:
        shown = f"{short(mib / 1024)} GiB" if in_gib else f"{short(mib)} MiB"
        grid.append(Rule(short(y_of(mib)), left - 6, short(y_of(mib) + 4), shown))
        mib += ystep
    ticks, tstep = [], nice_step(span)
    t = math.ceil(t0 / tstep) * tstep
    while t <= t1 + 1e-9:
        ticks.append(Label(x_of(t), str(height - 10), f"{short(t)} s"))
        t += tstep
    total = None
    if total_mib:
        y = y_of(total_mib)
        total = Rule(short(y), left + 4, short(y - 4), f"total {size(total_mib * 1024**2)}")
    dots = tuple(
        Dot(
            x_of(t),
            short(y_of(v)),
            f"{label + ': ' if label else ''}{size(v * 1024**2)} used at {short(t)} s",
        )
        for t, v, label in (labelled if len(labelled) <= 60 else [])
    )
    legend = "VRAM used (solid)" + (", GPU utilisation in % on the right axis (dashed)" if util else "")
    return VramChart(
        width=WIDTH,
        height=height,
        left=left,
        right_x=left + plot_w,
        top=top,
        bottom_y=top + plot_h,
        grid=tuple(grid),
        ticks=tuple(ticks),
        total=total,
        memory=" ".join(f"{x_of(t)},{short(y_of(v))}" for t, v, _ in labelled),
        dots=dots,
        util=" ".join(
            f"{x_of(t)},{short(top + plot_h - min(max(p, 0), 100) / 100 * plot_h)}" for t, p in util
        ),
        legend=f"{legend}; {source}.",
    )


# --- a scene's motion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionChart:
    """A scene's motion from frame to frame, small enough to sit beside its gallery."""

    width: int
    height: int
    left: int
    right_x: int
    top: int
    bottom_y: int
    points: str  # polyline points
    floor: Rule | None  # the frozen threshold (--min-motion), when above 0
    top_label: str
    frames_label: str
    title: str


def motion_chart(series: tuple[float, ...], floor: float | None, mean: float | None) -> MotionChart | None:
    """The motion series as a line over the frames, with the frozen threshold (``None``: no series)."""
    if not series:
        return None
    width, height, left, right, top, bottom = 320, 96, 40, 8, 8, 18
    plot_w, plot_h = width - left - right, height - top - bottom
    highest = max([*series, floor or 0.0, 0.1]) * 1.1
    step = plot_w / max(len(series) - 1, 1)

    def y_of(value: float) -> float:
        return top + plot_h - min(max(value, 0.0), highest) / highest * plot_h

    points = " ".join(f"{short(left + i * step)},{short(y_of(v))}" for i, v in enumerate(series))
    rule = None
    if floor:
        y = y_of(floor)
        rule = Rule(short(y), left + plot_w, short(y - 3), f"frozen below {floor:g}")
    shown = f"{mean:.2f}" if mean is not None else "—"
    return MotionChart(
        width=width,
        height=height,
        left=left,
        right_x=left + plot_w,
        top=top,
        bottom_y=top + plot_h,
        points=points,
        floor=rule,
        top_label=short(highest),
        frames_label=f"{len(series) + 1} frames",
        title=f"motion {shown} (mean grey-level change between frames, 0-255)"
        + (f"; frozen below {floor:g} (--min-motion)" if floor else ""),
    )
