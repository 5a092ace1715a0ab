"""The HTML report (design §6): one self-contained block that replaces the three hand-written reports.

``render_overview`` makes an HTML fragment (one ``<div class="gemdirect-report">`` with its own
scoped ``<style>``, no script, no external URL) from a run summary; it is injected into
pytest-html's report and wrapped by ``render_page`` into a standalone ``report.html``.

Reading order is the ten-second rule: the verdict and the step table first, then what went wrong
in plain words, then backends, configuration, timings (with a timeline drawn as inline SVG), the
comparison against a baseline run, GPU and VRAM, the story, a gallery per scene, the external
suites, warnings and the artifacts of the run.

Every value that came from a server, a workflow, an LLM or a file name goes through ``_esc`` (or
``_href`` for links). Every field of the summary is optional: a run killed half-way renders too.
Thumbnails and the animated preview of each scene are made once and cached under
``<run>/scene-NNN/preview/`` so that rewriting the report after every stage stays cheap.
Nothing here imports pytest.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageSequence

from pytest_gemdirect.rundir import atomic_write_bytes, atomic_write_text
from pytest_gemdirect.summary import STAGE_TITLES, STAGES, SYMBOLS, WRONG, verdict

__all__ = [
    "BaselineError",
    "CHANGE_THRESHOLD",
    "load_baseline",
    "render_overview",
    "render_page",
    "write_report",
]

CHANGE_THRESHOLD = 0.20  # a change against the baseline beyond this fraction is flagged
# Below these absolute differences a relative change is noise (a 0.01 s stage that took 0.02 s).
_NOISE_FLOOR = {"s": 0.05, "s/step": 0.002, "bytes": 16 * 1024**2}

PREVIEW_VERSION = 1
STRIP_FRAMES = 6
STRIP_WIDTH = 160
KEYFRAME_WIDTH = 256
ANIM_FRAMES = 12
ANIM_WIDTH = 256
ANIM_FRAME_MS = 125
ANIM_BUDGET_BYTES = 400_000  # an animated preview above this is made again smaller
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_SCENE_ID = re.compile(r"^scene-\d{3}$")
_SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|password|passwd|auth)", re.IGNORECASE)

STATUS_WORDS = {
    "passed": "passed",
    "failed": "failed",
    "not_reached": "not reached",
    "skipped": "skipped",
    "running": "running",
    "interrupted": "interrupted",
}

# What each stage checks, said as the expectation a failure did not meet (design §2).
EXPECTED = {
    "env": "Python, the required packages, enough disk and free ports on this machine",
    "llm": "GET /v1/models answers, the configured model is listed and a tiny chat completion"
    " answers within llm_timeout",
    "story": "the configured number of scenes, valid against schemas/story.schema.json,"
    " with one keyframe PNG per scene",
    "comfyui": "ComfyUI booted or attached and ready (GET /system_stats), the workflow's node classes"
    " and the SVD checkpoint present",
    "svd": "the workflow is queued and ComfyUI reports completion (execution_success, or executing"
    " with node null, or a final /history status) within scene_max_wait",
    "frames": "the outputs are listed in /history/<prompt id> within completion_grace and"
    " history_max_attempts polls, then downloaded and decodable",
    "suites": "the suite command exits 0 and its JUnit results show no failing case within suite_timeout",
    "summary": "run-summary.json valid against its schema, telemetry for every finished scene,"
    " every file it names present",
}
# The settings that bound each stage's waits, shown beside a failure.
BOUNDING = {
    "llm": ("llm_timeout",),
    "story": ("story_mode", "scenes", "llm_timeout"),
    "comfyui": ("comfyui_url", "workflow"),
    "svd": ("scene_max_wait", "max_scene_retries", "ws_idle_timeout"),
    "frames": ("completion_grace", "history_max_attempts", "history_poll_interval", "scene_max_wait"),
    "suites": ("suite_timeout",),
}


class BaselineError(ValueError):
    """A ``--baseline`` run directory whose run-summary.json is missing or not a summary."""


# --- small helpers ---------------------------------------------------------------------------


def _esc(value: Any) -> str:
    """Text for HTML (element content and quoted attributes alike)."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _secs(value: Any) -> str:
    v = _num(value)
    if v is None:
        return ""
    if v < 10:
        return f"{v:.2f} s"
    if v < 120:
        return f"{v:.1f} s"
    minutes, seconds = divmod(round(v), 60)
    return f"{minutes} min {seconds:02d} s"


def _bytes(value: Any) -> str:
    v = _num(value)
    if v is None:
        return ""
    if abs(v) >= 1024**3:
        return f"{v / 1024**3:.2f} GiB"
    return f"{v / 1024**2:.0f} MiB"


def _first_line(text: Any, limit: int = 180) -> str:
    if not text:
        return ""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _compact(value: Any, limit: int = 400) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status_cell(status: Any, reason: Any = None) -> str:
    status = str(status or "not_reached")
    word = STATUS_WORDS.get(status, status)
    text = f"{SYMBOLS.get(status, '?')} {word}"
    return f'<span class="gd-st gd-st-{_esc(status)}">{_esc(text)}</span>'


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _inside(root: Path, rel: Any) -> Path | None:
    """``root/rel`` when it stays inside ``root`` (a summary never makes the report read elsewhere)."""
    if not isinstance(rel, str) or not rel:
        return None
    try:
        base = root.resolve()
        path = (base / rel).resolve()
        path.relative_to(base)
    except (ValueError, OSError):
        return None
    return path


class _Links:
    """Links to files of the run, relative to where the HTML lives."""

    def __init__(self, run_root: Path, link_base: Path) -> None:
        self.run_root = run_root
        self.link_base = link_base

    def rel(self, path: Any) -> str | None:
        """A run-relative or absolute path as it is shown (relative to the run directory when inside)."""
        if not isinstance(path, str) or not path:
            return None
        p = Path(path)
        if p.is_absolute():
            try:
                return p.resolve().relative_to(self.run_root.resolve()).as_posix()
            except (ValueError, OSError):
                return str(p)
        return p.as_posix()

    def href(self, path: Any) -> str | None:
        shown = self.rel(path)
        if shown is None:
            return None
        p = Path(shown)
        if p.is_absolute():
            try:
                return p.as_uri()
            except ValueError:
                return None
        target = self.run_root / p
        try:
            relative = os.path.relpath(target, self.link_base)
        except ValueError:  # another drive on Windows
            return target.resolve().as_uri()
        return quote(Path(relative).as_posix(), safe="/")

    def exists(self, path: Any) -> bool | None:
        shown = self.rel(path)
        if shown is None:
            return None
        p = Path(shown)
        return (p if p.is_absolute() else self.run_root / p).exists()

    def link(self, path: Any, text: Any = None) -> str:
        """``<a href>`` to a file of the run, or the plain text when there is nothing to link."""
        shown = self.rel(path)
        if shown is None:
            return ""
        href = self.href(path)
        label = _esc(text if text is not None else shown)
        if href is None:
            return f"<code>{label}</code>"
        return f'<a href="{_esc(href)}"><code>{label}</code></a>'


# --- the run's facts, as the report needs them ---------------------------------------------


@dataclass
class _Row:
    key: str
    stage: str
    status: str
    duration_s: float | None
    message: str | None
    scene: str | None = None
    items: list[_Row] = field(default_factory=list)


def _stage_rows(data: Mapping[str, Any]) -> list[_Row]:
    stages = [s for s in _l(data.get("stages")) if isinstance(s, dict)]
    if not stages:
        return [_Row(name, name, "not_reached", None, None) for name in STAGES]
    rows = []
    for stage in stages:
        name = str(stage.get("name") or "?")
        row = _Row(
            name,
            name,
            str(stage.get("status") or "not_reached"),
            _num(stage.get("duration_s")),
            stage.get("message"),
        )
        for item in _l(stage.get("items")):
            if not isinstance(item, dict):
                continue
            key = str(item.get("key") or name)
            scene = key[key.index("[") + 1 : -1] if "[" in key and key.endswith("]") else None
            row.items.append(
                _Row(
                    key,
                    name,
                    str(item.get("status") or "not_reached"),
                    _num(item.get("duration_s")),
                    item.get("message"),
                    scene,
                )
            )
        rows.append(row)
    return rows


def _scenes(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [s for s in _l(data.get("scenes")) if isinstance(s, dict)]


def _scene_by_id(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(s.get("id")): s for s in _scenes(data)}


def _story_scenes(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(s.get("id")): s for s in _l(_d(data.get("story")).get("scenes")) if isinstance(s, dict)}


def _devices(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [d for d in _l(_d(data.get("comfyui")).get("devices")) if isinstance(d, dict)]


def _vram_total(data: Mapping[str, Any]) -> float | None:
    for device in _devices(data):
        total = _num(device.get("vram_total"))
        if total:
            return total
    return None


def _peak_vram_used(
    data: Mapping[str, Any], scene: Mapping[str, Any], run_root: Path | None = None
) -> float | None:
    """Bytes of VRAM in use at the scene's peak: its nvidia-smi samples when there are some, else
    the lowest free figure ComfyUI reported before/after it ran."""
    used = [s.used_mib for s in _scene_gpu_samples(run_root, scene) if s.used_mib is not None]
    if used:
        return max(used) * 1024**2
    total = _vram_total(data)
    tele = _d(scene.get("telemetry"))
    frees = [
        v for v in (_num(tele.get("vram_free_before")), _num(tele.get("vram_free_after"))) if v is not None
    ]
    if total is None or not frees:
        return None
    return total - min(frees)


def _failures(rows: list[_Row]) -> list[_Row]:
    found = []
    for row in rows:
        if row.items:
            found += [item for item in row.items if item.status in WRONG]
            if row.status in WRONG and not any(i.status in WRONG for i in row.items):
                found.append(row)
        elif row.status in WRONG:
            found.append(row)
    return found


def _secret_safe(name: str, value: Any) -> Any:
    """Belt and braces over the summary's own redaction: a secret-looking setting never shows."""
    if _SECRET_NAME.search(name) and value not in (None, "", "***", [], ()):
        return "***"
    return value


def _redact(value: Any, depth: int = 0) -> Any:
    """A copy of a nested value with every secret-looking key's value replaced by ``***``."""
    if depth > 12:
        return value
    if isinstance(value, dict):
        return {k: _secret_safe(str(k), _redact(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    return value


# --- previews (thumbnails and the animated preview, cached in the run directory) ------------


@dataclass
class _Thumb:
    index: int  # 1-based frame number in the scene
    name: str  # source file name (from the server: escaped when shown)
    rel: str  # run-relative path of the full frame
    data_uri: str


@dataclass
class _Preview:
    keyframe: str | None = None  # data URI
    keyframe_rel: str | None = None
    strip: list[_Thumb] = field(default_factory=list)
    anim: str | None = None  # data URI
    frames_total: int = 0
    problems: list[str] = field(default_factory=list)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _frame_files(frames_dir: Path) -> list[Path]:
    try:
        files = [p for p in frames_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    except OSError:
        return []
    return sorted(files, key=lambda p: _natural_key(p.name))


def _spread(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)``, first and last included."""
    if count <= 0:
        return []
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _scaled(image: Image.Image, width: int) -> Image.Image:
    image = _rgb(image)
    if image.width > width:
        height = max(1, round(image.height * width / image.width))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _jpeg(image: Image.Image, quality: int = 72) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _animated(frames: list[Image.Image], width: int, quality: int) -> tuple[bytes, str]:
    scaled = [_scaled(f, width) for f in frames]
    out = io.BytesIO()
    try:
        scaled[0].save(
            out,
            "WEBP",
            save_all=True,
            append_images=scaled[1:],
            duration=ANIM_FRAME_MS,
            loop=0,
            quality=quality,
            method=4,
        )
        return out.getvalue(), "webp"
    except (OSError, ValueError, KeyError):  # a Pillow built without WebP: fall back to GIF
        out = io.BytesIO()
        paletted = [f.convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for f in scaled]
        paletted[0].save(
            out,
            "GIF",
            save_all=True,
            append_images=paletted[1:],
            duration=ANIM_FRAME_MS,
            loop=0,
            optimize=True,
        )
        return out.getvalue(), "gif"


def _fingerprint(paths: Iterable[Path | None]) -> list[Any]:
    prints: list[Any] = []
    for path in paths:
        if path is None:
            prints.append(None)
            continue
        try:
            st = path.stat()
            prints.append([path.name, st.st_size, st.st_mtime_ns])
        except OSError:
            prints.append([path.name, None, None])
    return prints


def _data_uri(path: Path, mime: str) -> str | None:
    try:
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


_MIME = {".jpg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}


def _keyframe_path(run_root: Path, scene: Mapping[str, Any]) -> tuple[Path | None, str | None]:
    scene_id = str(scene.get("id") or "")
    candidates = [_d(scene.get("files")).get("keyframe")]
    if _SCENE_ID.match(scene_id):
        candidates += [f"{scene_id}/keyframe.png", f"story/keyframes/{scene_id}.png"]
    for rel in candidates:
        path = _inside(run_root, rel)
        if path is not None and path.is_file():
            return path, path.relative_to(run_root.resolve()).as_posix()
    return None, None


def _scene_preview(run_root: Path, scene: Mapping[str, Any]) -> _Preview:
    """Thumbnails and the animated preview of one scene, made once and cached beside its frames."""
    preview = _Preview()
    scene_id = str(scene.get("id") or "")
    keyframe, preview.keyframe_rel = _keyframe_path(run_root, scene)
    frames_dir = _inside(run_root, scene.get("frames_dir"))
    frames = _frame_files(frames_dir) if frames_dir is not None and frames_dir.is_dir() else []
    preview.frames_total = len(frames)
    if keyframe is None and not frames:
        return preview
    if not _SCENE_ID.match(scene_id):  # never make a folder named by an unexpected id
        preview.problems.append(f"no previews: unexpected scene id {scene_id!r}")
        return preview
    cache = run_root / scene_id / "preview"
    manifest_path = cache / "manifest.json"
    fingerprint = {
        "version": PREVIEW_VERSION,
        "keyframe": _fingerprint([keyframe]),
        "frames": _fingerprint(frames),
    }
    manifest: dict[str, Any] | None = None
    try:
        loaded = json.loads(manifest_path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict) and loaded.get("source") == fingerprint:
            manifest = loaded
    except (OSError, ValueError):
        manifest = None
    if manifest is not None:
        wanted = (
            [manifest.get("keyframe")]
            + [t.get("file") for t in _l(manifest.get("strip"))]
            + [manifest.get("anim")]
        )
        if not all((cache / name).is_file() for name in wanted if name):
            manifest = None
    if manifest is None:
        manifest = _make_previews(cache, keyframe, frames)
        manifest["source"] = fingerprint
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    if manifest.get("keyframe"):
        preview.keyframe = _data_uri(cache / manifest["keyframe"], "image/jpeg")
    frames_rel = [f.resolve().relative_to(run_root.resolve()).as_posix() for f in frames]
    for thumb in _l(manifest.get("strip")):
        index = thumb.get("index")
        if not isinstance(index, int) or not 0 <= index < len(frames):
            continue
        uri = _data_uri(cache / thumb["file"], "image/jpeg")
        if uri:
            preview.strip.append(_Thumb(index + 1, frames[index].name, frames_rel[index], uri))
    anim = manifest.get("anim")
    if anim:
        preview.anim = _data_uri(cache / anim, _MIME.get(Path(anim).suffix, "image/webp"))
    preview.problems += [str(p) for p in _l(manifest.get("problems"))]
    return preview


def _make_previews(cache: Path, keyframe: Path | None, frames: list[Path]) -> dict[str, Any]:
    manifest: dict[str, Any] = {"keyframe": None, "strip": [], "anim": None, "problems": []}
    if keyframe is not None:
        try:
            with Image.open(keyframe) as image:
                atomic_write_bytes(cache / "keyframe.jpg", _jpeg(_scaled(image, KEYFRAME_WIDTH)))
            manifest["keyframe"] = "keyframe.jpg"
        except Exception as exc:  # a bad file never stops the report
            manifest["problems"].append(f"keyframe {keyframe.name} could not be read: {exc}")
    if not frames:
        return manifest
    images = _decoded_frames(
        frames, set(_spread(len(frames), STRIP_FRAMES)) | set(_spread(len(frames), ANIM_FRAMES)), manifest
    )
    if len(frames) == 1 and 0 in images and len(images[0]) > 1:  # one animated output file
        sequence = images[0]
        anim_source = [sequence[i] for i in _spread(len(sequence), ANIM_FRAMES)]
        strip_source = [(0, sequence[i]) for i in _spread(len(sequence), STRIP_FRAMES)][:1]
    else:
        anim_source = [images[i][0] for i in _spread(len(frames), ANIM_FRAMES) if i in images]
        strip_source = [(i, images[i][0]) for i in _spread(len(frames), STRIP_FRAMES) if i in images]
    for index, image in strip_source:
        name = f"strip-{index + 1:04d}.jpg"
        atomic_write_bytes(cache / name, _jpeg(_scaled(image, STRIP_WIDTH), quality=70))
        manifest["strip"].append({"index": index, "file": name})
    if len(anim_source) > 1:
        payload, kind = _animated(anim_source, ANIM_WIDTH, 60)
        if len(payload) > ANIM_BUDGET_BYTES:
            payload, kind = _animated(anim_source, ANIM_WIDTH * 3 // 4, 35)
        atomic_write_bytes(cache / f"anim.{kind}", payload)
        manifest["anim"] = f"anim.{kind}"
    return manifest


def _decoded_frames(
    frames: list[Path], wanted: set[int], manifest: dict[str, Any]
) -> dict[int, list[Image.Image]]:
    images: dict[int, list[Image.Image]] = {}
    for index in sorted(wanted):
        path = frames[index]
        try:
            with Image.open(path) as image:
                if getattr(image, "n_frames", 1) > 1 and len(frames) == 1:
                    images[index] = [_scaled(f.copy(), ANIM_WIDTH) for f in ImageSequence.Iterator(image)]
                else:
                    image.load()
                    images[index] = [_scaled(image, ANIM_WIDTH)]
        except Exception as exc:  # a bad file never stops the report
            manifest["problems"].append(f"frame {path.name} could not be decoded: {exc}")
    return images


# --- SVG pictures ----------------------------------------------------------------------------

_COLOURS = {
    "passed": "#2e8b57",
    "failed": "#c62828",
    "skipped": "#9e9e9e",
    "not_reached": "#bdbdbd",
    "running": "#f9a825",
    "interrupted": "#6d4c41",
}


def _nice_step(span: float, ticks: int = 6) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _f(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


@dataclass
class _Bar:
    row: str  # stage name
    key: str
    status: str
    start: float
    duration: float
    parts: list[tuple[str, float]] = field(default_factory=list)  # (label, seconds) inside the bar
    scene: str | None = None


def _run_order(rows: list[_Row]) -> list[_Row]:
    """Stage nodes in the order the pipeline runs them: each scene's retrieval after its generation."""
    by_stage = {row.stage: row for row in rows}
    ordered: list[_Row] = []
    scenes_added = False
    for row in rows:
        if row.stage in ("svd", "frames"):
            if not scenes_added:
                ordered += _scene_nodes(by_stage)
                scenes_added = True
            continue
        ordered += row.items or [row]
    return ordered


def _scene_nodes(by_stage: dict[str, _Row]) -> list[_Row]:
    svd, frames = by_stage.get("svd"), by_stage.get("frames")
    nodes: list[_Row] = []
    scenes = sorted({i.scene for r in (svd, frames) if r for i in r.items if i.scene})
    for scene in scenes:
        for row in (svd, frames):
            nodes += [i for i in (row.items if row else []) if i.scene == scene]
    for row in (svd, frames):
        if row is not None and not row.items:
            nodes.append(row)
    return nodes


def _bars(rows: list[_Row], data: Mapping[str, Any]) -> list[_Bar]:
    scenes = _scene_by_id(data)
    bars, clock = [], 0.0
    for node in _run_order(rows):
        duration = node.duration_s or 0.0
        bar = _Bar(node.stage, node.key, node.status, clock, duration, scene=node.scene)
        tele = _d(scenes.get(node.scene or "", {}).get("telemetry"))
        if node.stage == "svd" and duration:
            queue, gen = _num(tele.get("queue_wait_s")), _num(tele.get("generation_s"))
            if queue is not None and gen is not None and queue + gen <= duration * 1.05:
                bar.parts = [("queue wait", queue), ("generation", gen)]
        bars.append(bar)
        clock += duration
    return bars


def _timeline_svg(rows: list[_Row], data: Mapping[str, Any]) -> str:
    bars = _bars(rows, data)
    total = sum(b.duration for b in bars)
    if not bars or total <= 0:
        return '<p class="gd-muted">No stage has a measured duration yet, so there is no timeline.</p>'
    lanes = [row.stage for row in rows]
    label_w, width, lane_h, top = 150, 960, 22, 8
    plot_w = width - label_w - 20
    height = top + lane_h * len(lanes) + 34
    scale = plot_w / total
    parts = [
        f'<svg class="gd-timeline" role="img" aria-label="timeline of the run" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
    ]
    step = _nice_step(total)
    axis_y = top + lane_h * len(lanes) + 4
    t = 0.0
    while t <= total + 1e-9:
        x = label_w + t * scale
        parts.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{axis_y}" class="gd-grid"/>')
        parts.append(
            f'<text x="{_f(x)}" y="{axis_y + 14}" text-anchor="middle" class="gd-axis">{_esc(_f(t))} s</text>'
        )
        t += step
    for lane, stage in enumerate(lanes):
        y = top + lane * lane_h
        title = STAGE_TITLES.get(stage, stage)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="gd-lane">{_esc(title)}</text>'
        )
    for bar in bars:
        if bar.row not in lanes:
            continue
        y = top + lanes.index(bar.row) * lane_h + 3
        x = label_w + bar.start * scale
        w = max(bar.duration * scale, 1.5)
        colour = _COLOURS.get(bar.status, "#bdbdbd")
        tip = f"{bar.key}: {STATUS_WORDS.get(bar.status, bar.status)}, {_secs(bar.duration) or '0 s'}"
        if bar.parts:
            tip += " (" + ", ".join(f"{label} {_secs(v)}" for label, v in bar.parts) + ")"
        parts.append(f"<g><title>{_esc(tip)}</title>")
        parts.append(
            f'<rect x="{_f(x)}" y="{y}" width="{_f(w)}" height="{lane_h - 6}" fill="{colour}" rx="2"/>'
        )
        if bar.parts and bar.parts[0][1] > 0:
            qw = bar.parts[0][1] * scale
            parts.append(
                f'<rect x="{_f(x)}" y="{y}" width="{_f(qw)}" height="{lane_h - 6}"'
                ' fill="#ffffff" opacity="0.45"/>'
            )
        if bar.scene and w > 44:
            parts.append(f'<text x="{_f(x + 3)}" y="{y + 12}" class="gd-barlabel">{_esc(bar.scene)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _sample_series(
    rows: list[_Row], data: Mapping[str, Any], run_root: Path
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], float | None]:
    """(seconds, MiB used), (seconds, utilisation %) and the total MiB from the GPU samples.

    Run-wide samples (``comfyui.gpu_samples``) when recorded; else each scene's samples from its
    scene.json, placed at its generation bar on the timeline's clock.
    """
    memory: list[tuple[float, float]] = []
    util: list[tuple[float, float]] = []
    totals: list[float] = []
    samples = [s for s in _l(_d(data.get("comfyui")).get("gpu_samples")) if isinstance(s, dict)]
    origin: float | None = None
    started = _parse_time(data.get("started_at"))
    for sample in samples:
        t = sample.get("t")
        when = _num(t)
        if when is None:
            moment = _parse_time(t)
            if moment is None:
                continue
            if started is not None and (moment.tzinfo is None) == (started.tzinfo is None):
                when = (moment - started).total_seconds()
            else:
                when = moment.timestamp()
        if when > 1e9:  # epoch seconds: relative to the first sample
            origin = when if origin is None else origin
            when -= origin
        used = _num(sample.get("memory_used_mib"))
        if used is None and _num(sample.get("memory_used")) is not None:
            used = float(sample["memory_used"]) / 1024**2
        if used is not None:
            memory.append((when, used))
        pct = _num(sample.get("utilization_pct"))
        if pct is not None:
            util.append((when, pct))
        total = _num(sample.get("memory_total_mib"))
        if total:
            totals.append(total)
    if not samples:
        scenes = _scene_by_id(data)
        for bar in _bars(rows, data):
            if bar.row != "svd" or not bar.scene:
                continue
            for gs in _scene_gpu_samples(run_root, scenes.get(bar.scene, {})):
                if gs.used_mib is not None:
                    memory.append((bar.start + gs.t, gs.used_mib))
                if gs.util_pct is not None:
                    util.append((bar.start + gs.t, gs.util_pct))
                if gs.total_mib:
                    totals.append(gs.total_mib)
    return memory, util, (max(totals) if totals else None)


def _scene_vram_series(rows: list[_Row], data: Mapping[str, Any]) -> list[tuple[float, float, str]]:
    """(seconds on the timeline, MiB used, label) before and after each scene's generation."""
    total = _vram_total(data)
    if total is None:
        return []
    points = []
    scenes = _scene_by_id(data)
    for bar in _bars(rows, data):
        if bar.row != "svd" or not bar.scene:
            continue
        tele = _d(scenes.get(bar.scene, {}).get("telemetry"))
        before, after = _num(tele.get("vram_free_before")), _num(tele.get("vram_free_after"))
        if before is not None:
            points.append((bar.start, (total - before) / 1024**2, f"{bar.scene} before"))
        if after is not None:
            points.append((bar.start + bar.duration, (total - after) / 1024**2, f"{bar.scene} after"))
    return points


def _vram_svg(rows: list[_Row], data: Mapping[str, Any], run_root: Path) -> str:
    memory, util, sampled_total = _sample_series(rows, data, run_root)
    source = "nvidia-smi samples while the scenes ran, on the timeline's clock"
    labelled: list[tuple[float, float, str]] = [(t, v, "") for t, v in memory]
    if not memory:
        labelled = _scene_vram_series(rows, data)
        source = "read from ComfyUI's /system_stats before and after each scene (the timeline's clock)"
    if not labelled and not util:
        return (
            '<p class="gd-muted">No VRAM figures were recorded in this run (no GPU samples, and no VRAM'
            " figures before/after the scenes).</p>"
        )
    width, height, left, right, top, bottom = 960, 220, 70, 50, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [t for t, _, _ in labelled] + [t for t, _ in util]
    t0, t1 = min(xs), max(xs)
    span = (t1 - t0) or 1.0
    total_mib = sampled_total or (_vram_total(data) or 0) / 1024**2
    top_mib = max([v for _, v, _ in labelled] + [total_mib, 1.0])
    in_gib = top_mib >= 1024
    ystep = _nice_step(top_mib / 1024, 4) * 1024 if in_gib else _nice_step(top_mib, 4)
    top_mib = math.ceil(top_mib / ystep - 1e-9) * ystep

    def tick(mib: float) -> str:
        return f"{_f(mib / 1024)} GiB" if in_gib else f"{_f(mib)} MiB"

    def x_of(t: float) -> float:
        return left + (t - t0) / span * plot_w

    def y_of(mib: float) -> float:
        return top + plot_h - mib / top_mib * plot_h

    parts = [
        f'<svg class="gd-vram" role="img" aria-label="VRAM over the run" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
    ]
    mib = 0.0
    while mib <= top_mib + 1e-9:
        y = y_of(mib)
        parts.append(f'<line x1="{left}" y1="{_f(y)}" x2="{left + plot_w}" y2="{_f(y)}" class="gd-grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end" class="gd-axis">{_esc(tick(mib))}</text>'
        )
        mib += ystep
    tstep = _nice_step(span)
    t = math.ceil(t0 / tstep) * tstep
    while t <= t1 + 1e-9:
        parts.append(
            f'<text x="{_f(x_of(t))}" y="{height - 10}" text-anchor="middle"'
            f' class="gd-axis">{_esc(_f(t))} s</text>'
        )
        t += tstep
    if total_mib:
        y = y_of(total_mib)
        parts.append(f'<line x1="{left}" y1="{_f(y)}" x2="{left + plot_w}" y2="{_f(y)}" class="gd-total"/>')
        parts.append(
            f'<text x="{left + 4}" y="{_f(y - 4)}" class="gd-axis">'
            f"total {_esc(_bytes(total_mib * 1024**2))}</text>"
        )
    if labelled:
        points = " ".join(f"{_f(x_of(t))},{_f(y_of(v))}" for t, v, _ in labelled)
        parts.append(f'<polyline points="{points}" class="gd-line-vram"/>')
        for t, v, label in labelled if len(labelled) <= 60 else []:
            tip = f"{label + ': ' if label else ''}{_bytes(v * 1024**2)} used at {_f(t)} s"
            parts.append(
                f'<circle cx="{_f(x_of(t))}" cy="{_f(y_of(v))}" r="3" class="gd-dot-vram">'
                f"<title>{_esc(tip)}</title></circle>"
            )
    if util:
        points = " ".join(
            f"{_f(x_of(t))},{_f(top + plot_h - min(max(p, 0), 100) / 100 * plot_h)}" for t, p in util
        )
        parts.append(f'<polyline points="{points}" class="gd-line-util"/>')
        parts.append(f'<text x="{left + plot_w + 4}" y="{top + 10}" class="gd-axis">100 %</text>')
        parts.append(f'<text x="{left + plot_w + 4}" y="{top + plot_h}" class="gd-axis">0 %</text>')
    parts.append("</svg>")
    legend = "VRAM used (solid)" + (", GPU utilisation in % on the right axis (dashed)" if util else "")
    return "".join(parts) + f'<p class="gd-caption">{_esc(legend)}; {_esc(source)}.</p>'


# --- sections ----------------------------------------------------------------------------------


def _table(head: list[str], body: list[str], cls: str = "") -> str:
    if not body:
        return ""
    ths = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return (
        f'<table class="gd-table {cls}"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _kv(rows: Iterable[tuple[str, Any]], cls: str = "") -> str:
    body = [f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows if v not in (None, "")]
    if not body:
        return ""
    return f'<table class="gd-table gd-kv {cls}"><tbody>{"".join(body)}</tbody></table>'


def _num_td(text: Any) -> str:
    return f'<td class="gd-num">{_esc(text)}</td>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section class="gd-section" id="gd-{sid}"><h3>{_esc(title)}</h3>{body}</section>'


def _row_evidence(row: _Row, data: Mapping[str, Any]) -> str:
    """One line of evidence for a stage (or a scene's node): its message, else the facts it produced."""
    if row.message:
        return _first_line(row.message)
    scenes = _scene_by_id(data)
    scene = scenes.get(row.scene or "", {})
    tele = _d(scene.get("telemetry"))
    if row.status != "passed":
        return ""
    if row.stage == "svd" and row.scene:
        bits = [f"prompt {scene.get('prompt_id')}" if scene.get("prompt_id") else ""]
        if tele.get("steps"):
            bits.append(f"{tele['steps']} steps")
        if _num(tele.get("seconds_per_step")) is not None:
            bits.append(f"{tele['seconds_per_step']:.2f} s/step")
        attempts = len(_l(scene.get("attempts")))
        if attempts:
            bits.append(f"{attempts} attempt{'s' if attempts != 1 else ''}")
        return ", ".join(b for b in bits if b)
    if row.stage == "frames" and row.scene:
        where = scene.get("frames_dir") or ""
        return f"{scene.get('frame_count') or 0} frames in {where}".strip()
    if row.stage == "env":
        env = _d(data.get("environment"))
        gpu = _d(env.get("gpu"))
        gpus = ", ".join(str(_d(g).get("name")) for g in _l(gpu.get("gpus")) if _d(g).get("name"))
        facts = [f"Python {env['python']}" if env.get("python") else "", env.get("platform") or ""]
        facts.append(f"GPU {gpus}" if gpus else ("no GPU visible" if gpu else ""))
        return ", ".join(str(f) for f in facts if f)
    if row.stage == "llm":
        llm = _d(data.get("llm"))
        model = llm.get("model") or llm.get("chosen_model")
        latency = _num(llm.get("first_latency_s") or llm.get("latency_s"))
        bits = [
            f"model {model}" if model else "",
            f"answered in {_secs(latency)}" if latency is not None else "",
        ]
        return ", ".join(b for b in bits if b)
    if row.stage == "story":
        story = _d(data.get("story"))
        meta = _d(story.get("metadata"))
        count = len(_l(story.get("scenes")))
        bits = [f"{count} scenes" if count else "", f"mode {meta['mode']}" if meta.get("mode") else ""]
        if story.get("title"):
            bits.append(f"“{story['title']}”")
        return ", ".join(b for b in bits if b)
    if row.stage == "comfyui":
        comfy = _d(data.get("comfyui"))
        names = ", ".join(str(d.get("name")) for d in _devices(data) if d.get("name"))
        bits = [
            f"ComfyUI {comfy['version']}" if comfy.get("version") else "ComfyUI",
            f"at {comfy['url']}" if comfy.get("url") else "",
            names,
            f"{comfy['node_classes']} node classes" if comfy.get("node_classes") else "",
        ]
        return " ".join(b for b in bits[:2] if b) + "".join(f", {b}" for b in bits[2:] if b)
    if row.stage in ("svd", "frames"):
        items = row.items
        done = sum(1 for i in items if i.status == "passed")
        frames = sum(int(s.get("frame_count") or 0) for s in scenes.values())
        return f"{done}/{len(items)} scenes" + (f", {frames} frames" if row.stage == "frames" else "")
    if row.stage == "suites" and row.scene:
        suite: dict[str, Any] = next(
            (_d(s) for s in _l(data.get("suites")) if _d(s).get("name") == row.scene), {}
        )
        totals = _d(suite.get("totals"))
        if totals:
            passed, skipped, tests = (totals.get(k, 0) for k in ("passed", "skipped", "tests"))
            return f"{passed} passed, {skipped} skipped of {tests}"
    if row.stage == "summary":
        return "run-summary.json valid, every named file present"
    return ""


def _steps_section(rows: list[_Row], data: Mapping[str, Any]) -> str:
    body = []
    for number, row in enumerate(rows, start=1):
        title = STAGE_TITLES.get(row.stage, row.stage)
        reason = f" ({_first_line(row.message, 120)})" if row.status == "skipped" and row.message else ""
        body.append(
            f'<tr class="gd-stage gd-status-{_esc(row.status)}" data-stage="{_esc(row.stage)}">'
            f"<td>{number}</td><td>{_esc(title)}</td><td>{_status_cell(row.status)}{_esc(reason)}</td>"
            f"{_num_td(_secs(row.duration_s))}<td>{_esc(_row_evidence(row, data))}</td></tr>"
        )
        for item in row.items:
            label = item.scene or item.key
            body.append(
                f'<tr class="gd-item gd-status-{_esc(item.status)}" data-stage="{_esc(row.stage)}"'
                f' data-key="{_esc(item.key)}"><td></td><td class="gd-sub">{_esc(label)}</td>'
                f"<td>{_status_cell(item.status)}</td>"
                f"{_num_td(_secs(item.duration_s))}<td>{_esc(_row_evidence(item, data))}</td></tr>"
            )
    return _section(
        "steps", "Steps", _table(["#", "step", "result", "duration", "evidence"], body, "gd-steps")
    )


def _setting_line(name: str, data: Mapping[str, Any]) -> str | None:
    settings = _d(data.get("settings"))
    if name not in settings:
        return None
    value = _secret_safe(name, settings[name])
    source = _d(data.get("setting_sources")).get(name)
    flag = "--" + name.replace("_", "-")
    shown = _setting_value(value)
    if source and source != "default":
        how = f"{source}" if flag in source else f"{source}; flag {flag}"
    else:
        how = f"{source + '; ' if source else ''}change with {flag}"
    return f"<code>{_esc(name)}</code> = <b>{_esc(shown)}</b> ({_esc(how)})"


def _setting_value(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and not value:
        return "none"
    return _compact(value, 300)


def _bounding_settings(
    row: _Row, evidence: Mapping[str, Any], data: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(settings named by the failure, the other settings that bound this stage)."""
    settings = _d(data.get("settings"))
    named: list[str] = []
    for key in ("setting", "bounded_by", "limit_setting"):
        value = evidence.get(key)
        for name in [value] if isinstance(value, str) else _l(value):
            if isinstance(name, str) and name in settings and name not in named:
                named.append(name)
    # the failure's own words (the policy the job ran under names every limit, so it is left out)
    said = {k: v for k, v in evidence.items() if k not in ("policy", "settings")}
    text = str(row.message or "") + " " + _compact(said, 4000)
    for name in settings:
        if name in named:
            continue
        flag = "--" + name.replace("_", "-")
        if re.search(rf"(?<![\w-]){re.escape(name)}(?!\w)", text) or re.search(
            rf"{re.escape(flag)}(?![\w-])", text
        ):
            named.append(name)
    others = [n for n in BOUNDING.get(row.stage, ()) if n in settings and n not in named]
    return named, others


def _pre(text: Any, cls: str = "") -> str:
    return f'<pre class="gd-pre {cls}">{_esc(text)}</pre>'


def _evidence_html(evidence: Mapping[str, Any]) -> str:
    """The job follower's evidence: the known facts in plain words, every other key as it came."""
    shown: set[str] = set()
    rows: list[tuple[str, str]] = []

    def take(*keys: str) -> Any:
        for key in keys:
            if key in evidence and evidence[key] not in (None, "", [], {}):
                shown.add(key)
                return evidence[key]
        return None

    kind = take("kind", "failure_kind")
    if kind:
        rows.append(("failure kind", _esc(kind)))
    prompt = take("prompt_id")
    if prompt:
        rows.append(("prompt id", f"<code>{_esc(prompt)}</code>"))
    progress = take("last_progress", "progress_last", "progress")
    if isinstance(progress, list) and progress and isinstance(progress[-1], list | dict):
        progress = progress[-1]
    if isinstance(progress, dict) and ("value" in progress or "max" in progress):
        rows.append(("last progress", _esc(f"{progress.get('value', '?')}/{progress.get('max', '?')}")))
    elif isinstance(progress, list) and len(progress) >= 2:
        rows.append(("last progress", _esc(f"{progress[-2]}/{progress[-1]}")))
    elif progress is not None:
        rows.append(("last progress", _esc(_compact(progress))))
    polls = take("poll_attempts", "history_polls", "polls", "history_attempts")
    counted = take("counted_poll_attempts")
    if polls is not None:
        extra = f" ({counted} counted against history_max_attempts)" if counted is not None else ""
        rows.append(("/history polls", _esc(_compact(polls) + extra)))
    last_poll = take("last_poll_answer")
    if last_poll is not None:
        rows.append(("last /history answer", _pre(_compact(last_poll, 1500))))
    for key, label in (
        ("elapsed_s", "elapsed"),
        ("waited_s", "waited"),
        ("deadline_s", "deadline"),
        ("completion_signal_s", "completion signal after"),
        ("completion_seen_s", "completion seen after"),
        ("outputs_announced_s", "outputs announced after"),
    ):
        value = take(key)
        if value is not None:
            rows.append((label, _esc(_secs(value) or _compact(value))))
        elif key in ("completion_signal_s", "outputs_announced_s") and key in evidence:
            shown.add(key)
            rows.append((label.replace(" after", ""), "none seen"))
    completion = take("completion", "completion_signal")
    if completion is not None:
        rows.append(("completion signal", _esc(_compact(completion))))
    if isinstance(evidence.get("interrupt_sent"), bool):
        shown.add("interrupt_sent")
        sent = evidence["interrupt_sent"]
        rows.append(("interrupt sent", "yes (POST /interrupt for this prompt)" if sent else "no"))
    error = take("error", "execution_error", "server_error", "exception")
    traceback = take("traceback")
    if isinstance(error, dict):
        node = " ".join(
            str(v)
            for v in (error.get("node_type"), f"(node {error['node_id']})" if error.get("node_id") else None)
            if v
        )
        message = ": ".join(
            str(v) for v in (error.get("exception_type"), error.get("exception_message")) if v
        )
        rows.append(
            (
                "server error",
                f'<span class="gd-prewrap">{_esc(message or _compact(error))}</span>'
                + (f" <span class='gd-muted'>in {_esc(node)}</span>" if node else ""),
            )
        )
        traceback = traceback or error.get("traceback")
    elif error is not None:
        rows.append(("server error", _esc(_compact(error, 2000))))
    if traceback:
        text = "".join(traceback) if isinstance(traceback, list) else str(traceback)
        rows.append(("traceback", _pre(text, "gd-traceback")))
    queue = take("queue", "queue_state", "queue_at_end")
    if queue is not None:
        rows.append(("queue at the end", _pre(_compact(queue, 1500))))
    messages = take("last_messages", "messages", "ws_messages", "recent_messages")
    if isinstance(messages, list):
        lines = [_message_line(m) for m in messages[-12:]]
        rows.append((f"last WebSocket messages ({len(messages)})", _pre("\n".join(lines), "gd-messages")))
    elif messages is not None:
        rows.append(("last WebSocket messages", _pre(_compact(messages, 3000), "gd-messages")))
    counts = take("message_counts")
    if isinstance(counts, dict):
        rows.append(("messages received", _esc(", ".join(f"{k} ×{v}" for k, v in counts.items()))))
    policy = take("policy")
    if isinstance(policy, dict):
        rows.append(("queue policy", _esc(", ".join(f"{k} = {v}" for k, v in policy.items()))))
    for key, value in evidence.items():
        if key in shown or key in ("setting", "bounded_by", "limit_setting") or value in (None, "", [], {}):
            continue
        rendered = _esc(value) if isinstance(value, str | int | float | bool) else _pre(_compact(value, 1500))
        rows.append((str(key).replace("_", " "), rendered))
    return _kv(rows, "gd-evidence")


def _message_line(message: Any) -> str:
    """One WebSocket message as a line: ``0.118 s  execution_error  node 5  {rest}``."""
    if not isinstance(message, dict) or "type" not in message:
        return message if isinstance(message, str) else _compact(message, 300)
    rest = {k: v for k, v in message.items() if k not in ("t", "type", "node")}
    t = _num(message.get("t"))
    parts = [f"{t:8.3f} s" if t is not None else "", str(message["type"])]
    if message.get("node") is not None:
        parts.append(f"node {message['node']}")
    if rest:
        parts.append(_compact(rest, 240))
    return "  ".join(p for p in parts if p)


def _look_next(row: _Row, data: Mapping[str, Any], links: _Links) -> list[str]:
    files: list[tuple[str, Any]] = []
    scene = _scene_by_id(data).get(row.scene or "", {})
    scene_files = _d(scene.get("files"))
    sid = str(scene.get("id") or "")
    if row.stage in ("svd", "frames") and _SCENE_ID.match(sid):
        for label, key, fallback in (
            ("WebSocket and poll events", "events", f"{sid}/events.jsonl"),
            ("history from ComfyUI", "history", f"{sid}/history.json"),
            ("scene record", "scene", f"{sid}/scene.json"),
            ("queued workflow", "workflow", f"{sid}/workflow.json"),
        ):
            path = scene_files.get(key) or fallback
            if links.exists(path):
                files.append((label, path))
    if row.stage in ("svd", "frames", "comfyui"):
        log = _d(_d(data.get("backends")).get("comfyui")).get("log")
        if log:
            files.append(("ComfyUI log", log))
    if row.stage in ("llm", "story"):
        log = _d(_d(data.get("backends")).get("llm")).get("log")
        if log:
            files.append(("LLM server log", log))
    if row.stage == "suites":
        suite = next((_d(s) for s in _l(data.get("suites")) if _d(s).get("name") == row.scene), {})
        files += [("suite log", suite.get("log")), ("JUnit XML", suite.get("junit"))]
    if row.stage == "story":
        files.append(("story", _d(data.get("story")).get("path")))
    files.append(("run summary", "run-summary.json"))
    return [
        f"{_esc(label)}: {links.link(path)}"
        for label, path in files
        if path and links.exists(path) is not False
    ]


def _failure_block(row: _Row, data: Mapping[str, Any], links: _Links) -> str:
    scene = _scene_by_id(data).get(row.scene or "", {}) if row.stage in ("svd", "frames") else {}
    evidence = _d(scene.get("evidence"))
    number = STAGES.index(row.stage) + 1 if row.stage in STAGES else "?"
    where = f"step {number}, {STAGE_TITLES.get(row.stage, row.stage)}"
    if row.scene:
        where += f", {row.scene}"
    story_scene = _story_scenes(data).get(row.scene or "", {})
    title = scene.get("title") or story_scene.get("title")
    facts: list[tuple[str, str]] = [
        ("where", _esc(where) + (f" — “{_esc(title)}”" if title else "")),
        ("expected", _esc(EXPECTED.get(row.stage, "the stage's check to pass"))),
        ("what happened", _pre(row.message or "(no message recorded)", "gd-message")),
    ]
    attempts = [a for a in _l(scene.get("attempts")) if isinstance(a, dict)]
    if attempts:
        body = [
            f"<tr><td>{_esc(a.get('number'))}</td><td>{_esc(a.get('outcome'))}</td><td>{_esc(a.get('started_at'))}</td>"
            f"<td>{_esc(a.get('ended_at'))}</td><td><code>{_esc(a.get('prompt_id'))}</code></td><td>{_esc(a.get('reason'))}</td></tr>"
            for a in attempts
        ]
        facts.append(("attempts", _table(["#", "outcome", "started", "ended", "prompt id", "reason"], body)))
    if evidence:
        facts.append(("seen last", _evidence_html(evidence)))
    progress = _scene_progress(links.run_root, scene)
    if progress and not any(k in evidence for k in ("last_progress", "progress_last", "progress")):
        t, value, maximum = progress[-1]
        facts.append(("last progress", _esc(f"{value}/{maximum} after {_secs(t) or t}")))
    named, others = _bounding_settings(row, evidence, data)
    lines = [line for line in (_setting_line(n, data) for n in named) if line]
    other_lines = [line for line in (_setting_line(n, data) for n in others) if line]
    if lines:
        facts.append(("bounded by", "<br>".join(lines)))
    if other_lines:
        facts.append(
            ("other limits of this step", '<span class="gd-muted">' + "<br>".join(other_lines) + "</span>")
        )
    nxt = _look_next(row, data, links)
    if nxt:
        facts.append(("look next at", "<ul>" + "".join(f"<li>{n}</li>" for n in nxt) + "</ul>"))
    head = f"{SYMBOLS['interrupted' if row.status == 'interrupted' else 'failed']} {where}"
    return (
        f'<div class="gd-failure" data-stage="{_esc(row.stage)}" data-key="{_esc(row.key)}">'
        f"<h4>{_esc(head)}</h4>{_kv(facts)}</div>"
    )


_RECORDS: dict[tuple[str, int, int], dict[str, Any]] = {}


def _scene_record(run_root: Path | None, scene: Mapping[str, Any]) -> dict[str, Any]:
    """A scene's scene.json (progress and GPU samples), read again only when it changed."""
    if run_root is None:
        return {}
    sid = str(scene.get("id") or "")
    rel = _d(scene.get("files")).get("scene") or (f"{sid}/scene.json" if _SCENE_ID.match(sid) else None)
    path = _inside(run_root, rel)
    if path is None:
        return {}
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in _RECORDS:
            if len(_RECORDS) > 256:
                _RECORDS.clear()
            _RECORDS[key] = _d(json.loads(path.read_text(encoding="utf-8")))
        return _RECORDS[key]
    except (OSError, ValueError):
        return {}


def _scene_progress(run_root: Path, scene: Mapping[str, Any]) -> list[tuple[Any, Any, Any]]:
    """The ``progress`` samples ``[t, value, max]`` of a scene's scene.json, when it was written."""
    progress = _l(_scene_record(run_root, scene).get("progress"))
    return [tuple(p[:3]) for p in progress if isinstance(p, list) and len(p) >= 3]


@dataclass
class _GpuSample:
    t: float  # seconds from the start of the scene's first attempt
    used_mib: float | None
    util_pct: float | None
    total_mib: float | None


def _scene_gpu_samples(run_root: Path | None, scene: Mapping[str, Any]) -> list[_GpuSample]:
    """The first GPU's nvidia-smi samples taken while the scene ran (attempts laid end to end)."""
    samples = [s for s in _l(_scene_record(run_root, scene).get("gpu_samples")) if isinstance(s, dict)]
    gpus = [s["gpu"] for s in samples if isinstance(s.get("gpu"), int)]
    first_gpu = min(gpus) if gpus else None
    found: list[_GpuSample] = []
    offset, last = 0.0, -1.0
    for sample in samples:
        t = _num(sample.get("t"))
        if t is None or sample.get("gpu", first_gpu) != first_gpu:
            continue
        if t < last:  # a new attempt: its sampler's clock began again
            offset += last
        last = t
        found.append(
            _GpuSample(
                offset + t,
                _num(sample.get("memory_used_mib")),
                _num(sample.get("utilization_pct")),
                _num(sample.get("memory_total_mib")),
            )
        )
    return found


def _failures_section(rows: list[_Row], data: Mapping[str, Any], links: _Links) -> str:
    failures = _failures(rows)
    status = data.get("status")
    if not failures:
        if status == "interrupted":
            text = f"The run was interrupted: {data.get('status_reason') or 'no reason recorded'}."
        elif status == "failed":
            text = (
                f"The run failed without a failed step: {data.get('status_reason') or 'no reason recorded'}."
            )
        elif status == "running":
            text = "Nothing has failed so far; the run is still going."
        else:
            text = "Nothing went wrong."
        return _section("failures", "What went wrong", f'<p class="gd-none">{_esc(text)}</p>')
    blocks = "".join(_failure_block(row, data, links) for row in failures)
    return _section("failures", f"What went wrong ({len(failures)})", blocks)


def _backends_section(data: Mapping[str, Any], links: _Links) -> str:
    backends = _d(data.get("backends"))
    body = []
    for name, backend in sorted(backends.items()):
        b = _d(backend)
        sim = '<span class="gd-simflag">SIMULATED</span>' if b.get("simulated") else "real"
        body.append(
            f"<tr><td>{_esc(name)}</td><td>{_esc(b.get('target'))}</td><td><code>{_esc(b.get('url'))}</code></td>"
            f"<td>{sim}</td><td>{_esc(b.get('version'))}</td><td>{_esc(b.get('pid'))}</td><td>{links.link(b.get('log'))}</td></tr>"
        )
    parts = [
        _table(["service", "target", "URL", "kind", "version", "pid", "log"], body)
        or '<p class="gd-muted">No backend was started or attached yet.</p>'
    ]
    comfy, llm, env = _d(data.get("comfyui")), _d(data.get("llm")), _d(data.get("environment"))
    comfy_rows = [
        ("version", _esc(comfy.get("version"))),
        ("Python", _esc(comfy.get("python"))),
        ("PyTorch", _esc(comfy.get("pytorch"))),
        ("workflow", _esc(comfy.get("workflow"))),
        (
            "workflow hash",
            f"<code>{_esc(comfy.get('workflow_hash'))}</code>" if comfy.get("workflow_hash") else None,
        ),
        ("node classes", _esc(comfy.get("node_classes"))),
    ]
    if _kv(comfy_rows):
        parts.append(f"<h4>ComfyUI</h4>{_kv(comfy_rows)}")
    llm_rows = [
        (str(k).replace("_", " "), _esc(_compact(_secret_safe(str(k), v), 300)))
        for k, v in _redact(llm).items()
    ]
    if _kv(llm_rows):
        parts.append(f"<h4>LLM</h4>{_kv(llm_rows)}")
    packages = _d(env.get("packages"))
    env_rows = [
        ("Python", _esc(env.get("python"))),
        ("platform", _esc(env.get("platform"))),
        ("Node / npm", _esc(" / ".join(str(v) for v in (env.get("node"), env.get("npm")) if v))),
        ("disk free", _esc(_bytes(env.get("disk_free_bytes")))),
        ("packages", _esc(", ".join(f"{k} {v}" for k, v in sorted(packages.items())))),
        ("harness", _esc(data.get("harness_version"))),
    ]
    if _kv(env_rows):
        parts.append(f"<h4>Machine</h4>{_kv(env_rows)}")
    return _section("backends", "Backends", "".join(parts))


def _config_section(data: Mapping[str, Any]) -> str:
    settings = _d(data.get("settings"))
    sources = _d(data.get("setting_sources"))
    body = []
    for name, value in settings.items():
        shown = _setting_value(_secret_safe(str(name), value))
        source = str(sources.get(name) or "")
        cls = ' class="gd-changed"' if source and source != "default" else ""
        body.append(
            f"<tr{cls}><td><code>{_esc(name)}</code></td><td>{_esc(shown)}</td><td>{_esc(source)}</td></tr>"
        )
    table = _table(["setting", "value", "source"], body, "gd-config")
    return _section("config", "Configuration", table or '<p class="gd-muted">No settings recorded.</p>')


def _timings_section(rows: list[_Row], data: Mapping[str, Any]) -> str:
    stage_body = [
        f"<tr><td>{_esc(STAGE_TITLES.get(r.stage, r.stage))}</td><td>{_status_cell(r.status)}</td>"
        f'<td class="gd-num">{_esc(_secs(r.duration_s))}</td></tr>'
        for r in rows
    ]
    scene_body = []
    rows_by_stage = {r.stage: r for r in rows}
    for scene in _scenes(data):
        sid = str(scene.get("id") or "")
        tele = _d(scene.get("telemetry"))
        durations = {
            st: next((i.duration_s for i in rows_by_stage[st].items if i.scene == sid), None)
            for st in ("svd", "frames")
            if st in rows_by_stage
        }
        spp = _num(tele.get("seconds_per_step"))
        scene_body.append(
            f'<tr data-scene="{_esc(sid)}"><td>{_esc(sid)}</td><td>{_status_cell(scene.get("status"))}</td>'
            f'<td class="gd-num">{_esc(_secs(tele.get("queue_wait_s")))}</td>'
            f'<td class="gd-num">{_esc(_secs(tele.get("generation_s")))}</td>'
            f'<td class="gd-num">{_esc(_secs(tele.get("retrieval_s")))}</td>'
            f'<td class="gd-num">{_esc(f"{spp:.3f} s" if spp is not None else "")}</td>'
            f'<td class="gd-num">{_esc(tele.get("steps"))}</td>'
            f'<td class="gd-num">{_esc(_secs(durations.get("svd")))}</td>'
            f'<td class="gd-num">{_esc(_secs(durations.get("frames")))}</td>'
            f'<td class="gd-num">{len(_l(scene.get("attempts")))}</td>'
            f'<td class="gd-num">{_esc(scene.get("frame_count") or 0)}</td></tr>'
        )
    total = _num(data.get("duration_s"))
    parts = [
        f"<h4>Timeline</h4>{_timeline_svg(rows, data)}"
        '<p class="gd-caption">Each step\'s node as a bar of its measured duration, laid end to end'
        " in the order the run took them (each scene's retrieval after its generation); the light part"
        " of a generation bar is"
        " its queue wait. Hover a bar for its figures."
        + (f" The whole run took {_esc(_secs(total))}." if total is not None else "")
        + "</p>",
        "<h4>Per step</h4>" + _table(["step", "result", "duration"], stage_body, "gd-stage-times"),
    ]
    if scene_body:
        parts.append(
            "<h4>Per scene</h4>"
            + _table(
                [
                    "scene",
                    "result",
                    "queue wait",
                    "generation",
                    "retrieval",
                    "s / step",
                    "steps",
                    "generation step",
                    "retrieval step",
                    "attempts",
                    "frames",
                ],
                scene_body,
                "gd-scene-times",
            )
        )
    return _section("timings", "Timings", "".join(parts))


_DEVICE_MEMORY = ("vram_total", "vram_free", "torch_vram_total", "torch_vram_free")


def _mib(value: Any) -> str:
    return f"{value} MiB" if value not in (None, "") else ""


def _gpu_section(rows: list[_Row], data: Mapping[str, Any], run_root: Path) -> str:
    parts = []
    devices = _devices(data)
    body = [
        f"<tr><td>{_esc(d.get('name'))}</td><td>{_esc(d.get('type'))}</td><td>{_esc(d.get('index'))}</td>"
        + "".join(_num_td(_bytes(d.get(k))) for k in _DEVICE_MEMORY)
        + "</tr>"
        for d in devices
    ]
    if body:
        parts.append(
            "<h4>ComfyUI devices</h4>"
            + _table(
                ["device", "type", "index", "VRAM total", "VRAM free", "torch total", "torch free"], body
            )
        )
    gpu = _d(_d(data.get("environment")).get("gpu"))
    if gpu:
        gpus = [_d(g) for g in _l(gpu.get("gpus"))]
        if gpus:
            body = [
                f"<tr><td>{_esc(g.get('name'))}</td>{_num_td(_mib(g.get('memory_total_mib')))}"
                f"{_num_td(_mib(g.get('memory_free_mib')))}<td>{_esc(g.get('driver'))}</td></tr>"
                for g in gpus
            ]
            parts.append(
                "<h4>nvidia-smi</h4>" + _table(["GPU", "memory total", "memory free", "driver"], body)
            )
        else:
            parts.append(
                '<p class="gd-muted">No GPU visible to this machine:'
                f" {_esc(gpu.get('note') or 'no reason given')}.</p>"
            )
    scene_body = []
    for scene in _scenes(data):
        tele = _d(scene.get("telemetry"))
        before, after = _num(tele.get("vram_free_before")), _num(tele.get("vram_free_after"))
        peak = _peak_vram_used(data, scene, run_root)
        if before is None and after is None and peak is None:
            continue
        delta = before - after if before is not None and after is not None else None
        scene_body.append(
            f"<tr><td>{_esc(scene.get('id'))}</td><td class='gd-num'>{_esc(_bytes(before))}</td>"
            f"<td class='gd-num'>{_esc(_bytes(after))}</td><td class='gd-num'>{_esc(_bytes(delta))}</td>"
            f"<td class='gd-num'>{_esc(_bytes(peak))}</td></tr>"
        )
    if scene_body:
        parts.append(
            "<h4>VRAM per scene</h4>"
            + _table(
                ["scene", "free before", "free after", "taken by the scene", "peak used (of total)"],
                scene_body,
            )
        )
    notes = sorted({str(_scene_record(run_root, s).get("gpu_note")) for s in _scenes(data)} - {"None", ""})
    for note in notes:
        parts.append(f'<p class="gd-muted">{_esc(note)}</p>')
    parts.append("<h4>VRAM over the run</h4>" + _vram_svg(rows, data, run_root))
    return _section("gpu", "GPU", "".join(parts))


def _story_section(data: Mapping[str, Any], links: _Links) -> str:
    story = _d(data.get("story"))
    if not story:
        return _section(
            "story",
            "Story",
            '<p class="gd-muted">No story was made (the story step was not reached or failed).</p>',
        )
    meta = _d(story.get("metadata"))
    head = [
        ("title", _esc(story.get("title"))),
        ("logline", _esc(story.get("logline"))),
        ("file", links.link(story.get("path")) if story.get("path") else None),
    ]
    head += [
        (str(k).replace("_", " "), _esc(_compact(_secret_safe(str(k), v), 300))) for k, v in meta.items()
    ]
    scenes = _scene_by_id(data)
    body = []
    for s in _l(story.get("scenes")):
        s = _d(s)
        status = _d(scenes.get(str(s.get("id")))).get("status")
        extra = {k: v for k, v in s.items() if k not in ("id", "title", "visual_prompt", "motion_prompt")}
        more = _compact(extra, 300) if extra else ""
        body.append(
            f'<tr data-scene="{_esc(s.get("id"))}"><td>{_esc(s.get("id"))}</td>'
            f"<td>{_status_cell(status) if status else ''}</td>"
            f'<td class="gd-title">{_esc(s.get("title"))}</td><td>{_esc(s.get("visual_prompt"))}</td>'
            f'<td>{_esc(s.get("motion_prompt"))}</td><td class="gd-muted">{_esc(more)}</td></tr>'
        )
    return _section(
        "story",
        "Story",
        _kv(head)
        + _table(
            ["scene", "result", "title", "visual prompt", "motion prompt", "more"], body, "gd-story-scenes"
        ),
    )


def _gallery_section(data: Mapping[str, Any], links: _Links) -> str:
    cards = []
    story_scenes = _story_scenes(data)
    for scene in _scenes(data):
        sid = str(scene.get("id") or "")
        try:
            preview = _scene_preview(links.run_root, scene)
        except Exception as exc:  # e.g. a read-only run directory: the report goes on without previews
            preview = _Preview(problems=[f"previews could not be made: {type(exc).__name__}: {exc}"])
        title = scene.get("title") or _d(story_scenes.get(sid)).get("title")
        parts = [
            f"<h4>{_status_cell(scene.get('status'))} {_esc(sid)}"
            + (f' <span class="gd-title">{_esc(title)}</span>' if title else "")
            + "</h4>"
        ]
        if preview.keyframe:
            image = f'<img src="{preview.keyframe}" alt="keyframe of {_esc(sid)}" width="{KEYFRAME_WIDTH}">'
            href = links.href(preview.keyframe_rel)
            if href:
                image = f'<a href="{_esc(href)}">{image}</a>'
            parts.append(f'<figure class="gd-keyframe">{image}<figcaption>keyframe</figcaption></figure>')
        if preview.anim:
            shown = min(preview.frames_total, ANIM_FRAMES)
            parts.append(
                f'<figure class="gd-anim"><img src="{preview.anim}" alt="animated preview of {_esc(sid)}"'
                f' width="{ANIM_WIDTH}"><figcaption>preview ({shown} of {preview.frames_total} frames)'
                "</figcaption></figure>"
            )
        if preview.strip:
            thumbs = "".join(
                f'<a href="{_esc(links.href(t.rel))}" title="{_esc(t.name)}"><img src="{t.data_uri}"'
                f' alt="frame {t.index} of {_esc(sid)}: {_esc(t.name)}" width="{STRIP_WIDTH}"></a>'
                for t in preview.strip
            )
            parts.append(f'<div class="gd-strip">{thumbs}</div>')
        frames_dir = scene.get("frames_dir")
        if preview.frames_total:
            parts.append(
                f'<p class="gd-caption">{preview.frames_total} frames in {links.link(frames_dir)}'
                " (thumbnails link to the full frames)</p>"
            )
        elif scene.get("status") in ("failed", "not_reached"):
            why = _first_line(scene.get("message")) or STATUS_WORDS.get(str(scene.get("status")), "")
            parts.append(f'<p class="gd-muted">No frames: {_esc(why)}</p>')
        else:
            parts.append('<p class="gd-muted">No frames yet.</p>')
        for problem in preview.problems:
            parts.append(f'<p class="gd-warn">{_esc(problem)}</p>')
        cards.append(
            f'<div class="gd-scene-card gd-status-{_esc(scene.get("status"))}" data-scene="{_esc(sid)}">'
            f"{''.join(parts)}</div>"
        )
    return _section("gallery", "Gallery", "".join(cards) or '<p class="gd-muted">No scenes.</p>')


def _where_in_file(case: Mapping[str, Any]) -> str:
    if not case.get("file"):
        return ""
    line = f":{case['line']}" if case.get("line") else ""
    return f" ({_esc(case['file'])}{_esc(line)})"


def _suites_section(data: Mapping[str, Any], links: _Links) -> str:
    suites = [_d(s) for s in _l(data.get("suites"))]
    if not suites:
        return ""
    blocks = []
    for suite in suites:
        totals = _d(suite.get("totals"))
        words = ", ".join(
            f"{totals[k]} {k}" for k in ("tests", "passed", "failures", "errors", "skipped") if k in totals
        )
        facts = [
            (
                "result",
                _status_cell("passed" if suite.get("status") == "passed" else "failed")
                + " "
                + _esc(suite.get("status")),
            ),
            ("command", f"<code>{_esc(suite.get('command'))}</code>"),
            ("duration", _esc(_secs(suite.get("duration_s")))),
            ("totals", _esc(words)),
            ("log", links.link(suite.get("log"))),
            ("JUnit", links.link(suite.get("junit"))),
        ]
        failing = [_d(f) for f in _l(suite.get("failures"))]
        if failing:
            items = "".join(
                f"<li><code>{_esc(f.get('classname'))} {_esc(f.get('name'))}</code>{_where_in_file(f)}"
                f": {_esc(f.get('message'))}{_pre(f.get('body')) if f.get('body') else ''}</li>"
                for f in failing
            )
            more = _num(suite.get("failures_total"))
            extra = (
                f"<p class='gd-muted'>{int(more) - len(failing)} more not shown</p>"
                if more and more > len(failing)
                else ""
            )
            facts.append(("failing cases", f"<ul>{items}</ul>{extra}"))
        blocks.append(f'<div class="gd-suite"><h4>{_esc(suite.get("name"))}</h4>{_kv(facts)}</div>')
    return _section("suites", "External suites", "".join(blocks))


def _warning_text(item: Any) -> str:
    if isinstance(item, dict) and item.get("message"):
        kind = f"<b>{_esc(item['kind'])}:</b> " if item.get("kind") else ""
        line = (
            f' <span class="gd-muted">(log line {_esc(item["line_no"])})</span>'
            if item.get("line_no")
            else ""
        )
        return f"{kind}{_esc(item['message'])}{line}"
    return _esc(item if isinstance(item, str) else _compact(item, 500))


def _warnings_section(data: Mapping[str, Any]) -> str:
    comfy = _d(data.get("comfyui"))
    groups: list[tuple[str, list[Any]]] = [
        ("run", _l(data.get("warnings"))),
        ("ComfyUI startup log", _l(comfy.get("startup_warnings"))),
        ("workflow preflight", _l(comfy.get("preflight_problems"))),
    ]
    parts = []
    for label, items in groups:
        if items:
            lis = "".join(f"<li>{_warning_text(i)}</li>" for i in items)
            parts.append(f"<h4>{_esc(label)} ({len(items)})</h4><ul class='gd-warnings'>{lis}</ul>")
    return _section("warnings", "Warnings", "".join(parts) or '<p class="gd-none">No warnings.</p>')


def _artifacts_section(data: Mapping[str, Any], links: _Links) -> str:
    entries: list[tuple[str, Any]] = [
        ("run summary (JSON)", "run-summary.json"),
        ("run summary (text)", "run-summary.txt"),
        ("this report", "report.html"),
    ]
    entries += [(str(name), path) for name, path in sorted(_d(data.get("artifacts")).items())]
    for name, backend in sorted(_d(data.get("backends")).items()):
        if _d(backend).get("log"):
            entries.append((f"{name} log", _d(backend)["log"]))
    for suite in _l(data.get("suites")):
        suite = _d(suite)
        entries += [
            (f"suite {suite.get('name')} log", suite.get("log")),
            (f"suite {suite.get('name')} JUnit", suite.get("junit")),
        ]
    for scene in _scenes(data):
        sid = scene.get("id")
        for key, path in sorted(_d(scene.get("files")).items()):
            entries.append((f"{sid} {key}", path))
        if scene.get("frames_dir"):
            entries.append((f"{sid} frames ({scene.get('frame_count') or 0})", scene["frames_dir"]))
    body, seen = [], set()
    for name, path in entries:
        if not path or (name, path) in seen:
            continue
        seen.add((name, path))
        exists = links.exists(path)
        missing = exists is False and path != "report.html"  # being written right now
        mark = ' <span class="gd-warn">(missing)</span>' if missing else ""
        body.append(f"<tr><td>{_esc(name)}</td><td>{links.link(path)}{mark}</td></tr>")
    where = f"<p>Run directory: <code>{_esc(data.get('run_dir') or links.run_root)}</code></p>"
    return _section(
        "artifacts", "Artifacts", where + _table(["what", "where (relative to the run directory)"], body)
    )


# --- baseline ----------------------------------------------------------------------------------


def load_baseline(run_dir: Path) -> dict[str, Any]:
    """The run summary of an earlier run directory (or of a run-summary.json given directly).

    Its ``run_dir`` is set to where it lies now (a run directory copied from another machine
    still gives its GPU samples to the comparison).
    """
    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".json" else run_dir / "run-summary.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            f"baseline: {path} does not exist (is {run_dir} a gemdirect run directory?)"
        ) from None
    except OSError as exc:
        raise BaselineError(f"baseline: {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"baseline: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", []), list):
        raise BaselineError(
            f"baseline: {path} is not a gemdirect run summary (expected a JSON object with stages)"
        )
    data["run_dir"] = str(path.parent.resolve())
    return data


@dataclass
class _Change:
    group: str
    label: str
    unit: str
    before: float | None
    now: float | None

    @property
    def ratio(self) -> float | None:
        if self.before is None or self.now is None or self.before == 0:
            return None
        return (self.now - self.before) / self.before

    @property
    def flagged(self) -> bool:
        ratio = self.ratio
        if ratio is None or self.before is None or self.now is None:
            return False
        return abs(ratio) > CHANGE_THRESHOLD and abs(self.now - self.before) >= _NOISE_FLOOR.get(self.unit, 0)


# (column label, unit) of the baseline table; a stage row has only the duration.
_MEASURES = (
    ("duration", "s"),
    ("queue wait", "s"),
    ("generation", "s"),
    ("retrieval", "s"),
    ("seconds per step", "s/step"),
    ("peak VRAM used", "bytes"),
)


def _metrics(data: Mapping[str, Any], run_root: Path | None) -> dict[str, dict[str, float | None]]:
    """Per stage (its title) and per scene (its id): the measures compared against a baseline."""
    rows = _stage_rows(data)
    found: dict[str, dict[str, float | None]] = {}
    for row in rows:
        found[STAGE_TITLES.get(row.stage, row.stage)] = {"duration": row.duration_s}
    by_stage = {r.stage: r for r in rows}
    for scene in _scenes(data):
        sid = str(scene.get("id"))
        tele = _d(scene.get("telemetry"))
        nodes = [
            i.duration_s
            for st in ("svd", "frames")
            if st in by_stage
            for i in by_stage[st].items
            if i.scene == sid
        ]
        found[sid] = {
            "duration": sum(d for d in nodes if d is not None) if any(d is not None for d in nodes) else None,
            "queue wait": _num(tele.get("queue_wait_s")),
            "generation": _num(tele.get("generation_s")),
            "retrieval": _num(tele.get("retrieval_s")),
            "seconds per step": _num(tele.get("seconds_per_step")),
            "peak VRAM used": _peak_vram_used(data, scene, run_root),
        }
    return found


def _changes(
    data: Mapping[str, Any], run_root: Path, baseline: Mapping[str, Any]
) -> list[tuple[str, list[_Change]]]:
    baseline_root = Path(str(baseline.get("run_dir") or ""))
    now = _metrics(data, run_root)
    before = _metrics(baseline, baseline_root if baseline.get("run_dir") and baseline_root.is_dir() else None)
    table = []
    for group in list(now) + [g for g in before if g not in now]:
        changes = [
            _Change(group, label, unit, before.get(group, {}).get(label), now.get(group, {}).get(label))
            for label, unit in _MEASURES
        ]
        if any(c.before is not None or c.now is not None for c in changes):
            table.append((group, changes))
    return table


def _fmt_unit(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "bytes":
        return _bytes(value)
    if unit == "s/step":
        return f"{value:.3f} s"
    return _secs(value)


def _change_cell(change: _Change) -> str:
    if change.before is None and change.now is None:
        return "<td></td>"
    ratio = change.ratio
    pct = f"{ratio * 100:+.0f} %" if ratio is not None else ""
    classes = ["gd-delta"]
    if change.flagged and change.now is not None and change.before is not None:
        classes += ["gd-flag", "gd-worse" if change.now > change.before else "gd-better"]
        pct = f"⚠ {pct}"
    values = f"{_fmt_unit(change.before, change.unit)} → {_fmt_unit(change.now, change.unit)}"
    return (
        f'<td class="{" ".join(classes)}" data-metric="{_esc(change.label)}">{_esc(values)}'
        f'<br><span class="gd-pct">{_esc(pct)}</span></td>'
    )


def _baseline_section(data: Mapping[str, Any], run_root: Path, baseline: Mapping[str, Any]) -> str:
    table_rows = _changes(data, run_root, baseline)
    body = [
        f'<tr data-group="{_esc(group)}"><th>{_esc(group)}</th>'
        + "".join(_change_cell(c) for c in changes)
        + "</tr>"
        for group, changes in table_rows
    ]
    flagged = sum(1 for _, changes in table_rows for c in changes if c.flagged)
    head = (
        f"<p>Against run <code>{_esc(baseline.get('run_id'))}</code> ({_esc(verdict_of(baseline))},"
        f" started {_esc(baseline.get('started_at'))}, <code>{_esc(baseline.get('run_dir'))}</code>):"
        f' <b class="gd-flagcount">{flagged} change{"s" if flagged != 1 else ""} beyond'
        f" {CHANGE_THRESHOLD * 100:.0f} %</b>.</p>"
    )
    note = (
        '<p class="gd-caption">Each cell: baseline → this run, and the change. Flagged (⚠): more than'
        f" {CHANGE_THRESHOLD * 100:.0f} % and above the noise floor (0.05 s, 0.002 s a step, 16 MiB);"
        " red is slower or more VRAM, green faster or less. A scene's duration is its generation step"
        " plus its retrieval step.</p>"
    )
    headings = ["step / scene"] + [label for label, _ in _MEASURES]
    table = _table(headings, body, "gd-baseline")
    return _section("baseline", "Against the baseline", head + (table or "<p>Nothing to compare.</p>") + note)


def verdict_of(data: Mapping[str, Any]) -> str:
    """The summary's one-line verdict, for any summary (however partial)."""
    return verdict({**data, "status": data.get("status") or "running"})


# --- the whole block ---------------------------------------------------------------------------

_CSS = """
.gemdirect-report{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;font-size:14px;
 color:#1b1b1b;line-height:1.4;max-width:1400px;text-align:left}
.gemdirect-report *{box-sizing:border-box}
.gemdirect-report a{color:#1a56c4;text-decoration:underline}
.gemdirect-report h2{font-size:22px;margin:8px 0 4px}
.gemdirect-report h3{font-size:17px;margin:20px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.gemdirect-report h4{font-size:14px;margin:12px 0 4px}
.gemdirect-report .gd-verdict{padding:12px 16px;border-radius:6px;font-size:20px;font-weight:700;margin:6px 0}
.gemdirect-report .gd-v-passed{background:#e3f4ea;color:#14532d;border:2px solid #2e8b57}
.gemdirect-report .gd-v-failed,.gemdirect-report .gd-v-interrupted{background:#fdecea;color:#7f1010;
 border:2px solid #c62828}
.gemdirect-report .gd-v-running{background:#fff8e1;color:#6d4c00;border:2px solid #f9a825}
.gemdirect-report .gd-banner{padding:8px 14px;border-radius:6px;margin:6px 0;font-weight:600}
.gemdirect-report .gd-simulated{
 background:repeating-linear-gradient(45deg,#fff3cd,#fff3cd 12px,#ffe8a1 12px,#ffe8a1 24px);
 border:2px dashed #b7791f;color:#5c3c00}
.gemdirect-report .gd-headline{margin:4px 0;font-size:15px}
.gemdirect-report .gd-meta{color:#555;font-size:13px;margin:2px 0}
.gemdirect-report nav.gd-nav{font-size:13px;margin:6px 0}
.gemdirect-report nav.gd-nav a{margin-right:10px}
.gemdirect-report table.gd-table{border-collapse:collapse;margin:4px 0 8px;width:auto;min-width:0}
.gemdirect-report table.gd-table th,.gemdirect-report table.gd-table td{border:1px solid #ddd;padding:3px 8px;
 vertical-align:top;text-align:left;font-size:13px}
.gemdirect-report table.gd-table thead th{background:#f3f3f3}
.gemdirect-report table.gd-kv th{background:#fafafa;white-space:nowrap;font-weight:600}
.gemdirect-report td.gd-num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.gemdirect-report tr.gd-stage td{font-weight:600}
.gemdirect-report tr.gd-item td{font-weight:400;background:#fcfcfc}
.gemdirect-report td.gd-sub{padding-left:26px}
.gemdirect-report tr.gd-status-failed td{background:#fdecea}
.gemdirect-report tr.gd-status-not_reached td,.gemdirect-report tr.gd-status-skipped td{color:#666}
.gemdirect-report .gd-st{white-space:nowrap}
.gemdirect-report .gd-st-failed{color:#b71c1c;font-weight:700}
.gemdirect-report .gd-st-passed{color:#1b5e20}
.gemdirect-report .gd-failure{border-left:4px solid #c62828;padding:2px 10px;margin:8px 0;background:#fffafa}
.gemdirect-report .gd-failure h4{color:#7f1010}
.gemdirect-report pre.gd-pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;
 max-height:320px;
 overflow:auto;background:#f6f6f6;padding:4px 6px;font-family:ui-monospace,Menlo,Consolas,monospace}
.gemdirect-report code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.gemdirect-report .gd-muted{color:#666}
.gemdirect-report .gd-prewrap{white-space:pre-wrap}
.gemdirect-report .gd-none{color:#1b5e20}
.gemdirect-report .gd-warn{color:#8a4b00}
.gemdirect-report .gd-caption{color:#555;font-size:12px;margin:2px 0 8px}
.gemdirect-report .gd-simflag{background:#ffe8a1;color:#5c3c00;font-weight:700;padding:0 4px;
 border-radius:3px}
.gemdirect-report tr.gd-changed td{background:#f4f8ff}
.gemdirect-report td.gd-flag{font-weight:700}
.gemdirect-report td.gd-worse{background:#fdecea}
.gemdirect-report td.gd-better{background:#e3f4ea}
.gemdirect-report .gd-pct{font-size:12px;color:#444}
.gemdirect-report svg{display:block;max-width:100%;height:auto;background:#fff}
.gemdirect-report svg text{font-family:system-ui,sans-serif}
.gemdirect-report svg .gd-axis{font-size:11px;fill:#555}
.gemdirect-report svg .gd-lane{font-size:12px;fill:#222}
.gemdirect-report svg .gd-barlabel{font-size:10px;fill:#fff}
.gemdirect-report svg .gd-grid{stroke:#e6e6e6;stroke-width:1}
.gemdirect-report svg .gd-total{stroke:#999;stroke-dasharray:2 3}
.gemdirect-report svg .gd-line-vram{fill:none;stroke:#1565c0;stroke-width:2}
.gemdirect-report svg .gd-dot-vram{fill:#1565c0}
.gemdirect-report svg .gd-line-util{fill:none;stroke:#ef6c00;stroke-width:1.5;stroke-dasharray:5 3}
.gemdirect-report .gd-scene-card{border:1px solid #ddd;border-radius:6px;padding:4px 10px 8px;margin:8px 0}
.gemdirect-report .gd-scene-card.gd-status-failed{border-color:#c62828}
.gemdirect-report figure{display:inline-block;margin:4px 12px 4px 0;vertical-align:top}
.gemdirect-report figure img,.gemdirect-report .gd-strip img{display:block;height:auto;
 border:1px solid #ccc;background:#eee}
.gemdirect-report figcaption{font-size:12px;color:#555}
.gemdirect-report .gd-strip{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0}
.gemdirect-report .gd-strip img{max-width:160px}
.gemdirect-report .gd-title{font-style:italic}
.gemdirect-report ul{margin:2px 0;padding-left:20px}
"""


def _header(rows: list[_Row], data: Mapping[str, Any], links: _Links) -> str:
    status = str(data.get("status") or "running")
    symbol = {"passed": SYMBOLS["passed"], "failed": SYMBOLS["failed"], "interrupted": SYMBOLS["failed"]}.get(
        status, SYMBOLS["running"]
    )
    parts = [
        f"<h2>gemdirect run <code>{_esc(data.get('run_id'))}</code></h2>",
        f'<div class="gd-verdict gd-v-{_esc(status)}" data-status="{_esc(status)}">'
        f"{_esc(symbol)} {_esc(verdict_of(data))}</div>",
    ]
    simulated = sorted(name for name, b in _d(data.get("backends")).items() if _d(b).get("simulated"))
    if data.get("simulated") or simulated:
        which = ", ".join(simulated) or "a backend"
        parts.append(
            f'<p class="gd-banner gd-simulated">SIMULATED: {_esc(which)} ran on the embedded simulator.'
            " This run checks the harness and the protocol, not a GPU:"
            " a simulated pass is not a GPU pass.</p>"
        )
    failures = _failures(rows)
    if failures:
        first = failures[0]
        number = STAGES.index(first.stage) + 1 if first.stage in STAGES else "?"
        where = f"step {number} ({STAGE_TITLES.get(first.stage, first.stage)})" + (
            f", {first.scene}" if first.scene else ""
        )
        more = (
            f" — and {len(failures) - 1} more failure{'s' if len(failures) > 2 else ''}"
            if len(failures) > 1
            else ""
        )
        parts.append(
            f'<p class="gd-headline"><b>First failure:</b> {_esc(where)}: {_esc(_without_scene(first))}'
            f'{_esc(more)} (<a href="#gd-failures">what went wrong</a>)</p>'
        )
        nxt = _look_next(first, data, links)
        if nxt:
            parts.append(f'<p class="gd-headline"><b>Look next at:</b> {"; ".join(nxt[:3])}</p>')
    elif status == "running":
        done = sum(1 for r in rows if r.status != "not_reached")
        parts.append(f'<p class="gd-headline">Running: {done} of {len(rows)} steps have a result so far.</p>')
    meta = [
        f"started {data['started_at']}" if data.get("started_at") else "",
        f"finished {data['finished_at']}" if data.get("finished_at") else "",
        f"took {_secs(data.get('duration_s'))}" if _num(data.get("duration_s")) is not None else "",
        f"report written {datetime.now().astimezone().isoformat(timespec='seconds')}"
        + (" (rewritten as the run goes)" if status == "running" else ""),
    ]
    parts.append(f'<p class="gd-meta">{_esc(" · ".join(m for m in meta if m))}</p>')
    if data.get("run_dir"):
        parts.append(f'<p class="gd-meta">run directory <code>{_esc(data.get("run_dir"))}</code></p>')
    return "".join(parts)


def _without_scene(row: _Row) -> str:
    """The first line of a node's message without the scene id it starts with (said already)."""
    line = _first_line(row.message, 240)
    if row.scene and line.startswith(row.scene + " "):
        line = line[len(row.scene) + 1 :]
    return line


_NAV = (
    ("steps", "Steps"),
    ("failures", "What went wrong"),
    ("backends", "Backends"),
    ("config", "Configuration"),
    ("timings", "Timings"),
    ("baseline", "Baseline"),
    ("gpu", "GPU"),
    ("story", "Story"),
    ("gallery", "Gallery"),
    ("suites", "Suites"),
    ("warnings", "Warnings"),
    ("artifacts", "Artifacts"),
)


def _guarded(name: str, render: Any, *args: Any) -> str:
    """One section; an unexpected shape of data costs that section, never the whole report."""
    try:
        return str(render(*args))
    except Exception as exc:
        return _section(
            name,
            name.capitalize(),
            f'<p class="gd-warn">This section could not be drawn: {_esc(type(exc).__name__)}:'
            f" {_esc(exc)}</p>",
        )


def render_overview(
    data: Mapping[str, Any],
    run_root: Path,
    *,
    baseline: Mapping[str, Any] | None = None,
    link_base: Path | None = None,
) -> str:
    """The report as one ``<div class="gemdirect-report">`` (scoped style, no script, no external URL).

    ``run_root`` is the run directory (for previews and links); ``link_base`` is the folder of the
    HTML file the block goes into (default: the run directory), so links to frames are relative to it.
    """
    data = data if isinstance(data, Mapping) else {}
    run_root = Path(run_root)
    links = _Links(run_root, Path(link_base) if link_base is not None else run_root)
    rows = _stage_rows(data)
    sections = [
        _guarded("verdict", _header, rows, data, links),
        _guarded("steps", _steps_section, rows, data),
        _guarded("failures", _failures_section, rows, data, links),
        _guarded("backends", _backends_section, data, links),
        _guarded("config", _config_section, data),
        _guarded("timings", _timings_section, rows, data),
        _guarded("baseline", _baseline_section, data, run_root, baseline) if baseline is not None else "",
        _guarded("gpu", _gpu_section, rows, data, run_root),
        _guarded("story", _story_section, data, links),
        _guarded("gallery", _gallery_section, data, links),
        _guarded("suites", _suites_section, data, links),
        _guarded("warnings", _warnings_section, data),
        _guarded("artifacts", _artifacts_section, data, links),
    ]
    present = [(sid, label) for sid, label in _NAV if any(f'id="gd-{sid}"' in s for s in sections)]
    nav = (
        '<nav class="gd-nav">'
        + "".join(f'<a href="#gd-{sid}">{_esc(label)}</a>' for sid, label in present)
        + "</nav>"
    )
    sections.insert(1, nav)
    return f'<div class="gemdirect-report"><style>{_CSS}</style>{"".join(sections)}</div>'


_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def render_page(
    data: Mapping[str, Any],
    run_root: Path,
    *,
    baseline: Mapping[str, Any] | None = None,
    link_base: Path | None = None,
) -> str:
    """A standalone HTML page around ``render_overview`` (one file, opens offline, runs no script)."""
    title = f"gemdirect {data.get('run_id') or ''}: {verdict_of(data)}"
    body = render_overview(data, run_root, baseline=baseline, link_base=link_base)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_esc(title)}</title></head>"
        f'<body style="margin:16px">{body}</body></html>\n'
    )


def write_report(
    path: Path, data: Mapping[str, Any], run_root: Path, *, baseline: Mapping[str, Any] | None = None
) -> None:
    """Write the standalone page atomically (no reader sees half a report); links relative to ``path``."""
    path = Path(path)
    atomic_write_text(path, render_page(data, run_root, baseline=baseline, link_base=path.parent))
