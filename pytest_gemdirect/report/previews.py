"""Thumbnails and the animated preview of a scene, made once with Pillow and cached in the run.

The report is rewritten after every stage, so decoding 25 frames of 1024x576 each time would cost
seconds: previews are written under ``<run>/scene-NNN/preview/`` with a manifest that fingerprints
their sources (name, size, mtime) and are made again only when a frame changed. A bad frame costs
that frame (named in the report), never the report.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageSequence

from pytest_gemdirect.report.links import SCENE_ID, inside
from pytest_gemdirect.rundir import atomic_write_bytes, atomic_write_text

PREVIEW_VERSION = 1
STRIP_FRAMES = 6
STRIP_WIDTH = 160
KEYFRAME_WIDTH = 256
ANIM_FRAMES = 12
ANIM_WIDTH = 256
ANIM_FRAME_MS = 125
ANIM_BUDGET_BYTES = 400_000  # an animated preview above this is made again smaller
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_MIME = {".jpg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}


@dataclass(frozen=True)
class Thumb:
    index: int  # 1-based frame number in the scene
    name: str  # source file name (from the server: escaped when shown)
    rel: str  # run-relative path of the full frame
    data_uri: str


@dataclass
class Preview:
    keyframe: str | None = None  # data URI
    keyframe_rel: str | None = None
    keyframe_end: str | None = None  # bookend mode: the end keyframe's data URI
    keyframe_end_rel: str | None = None
    strip: list[Thumb] = field(default_factory=list)
    anim: str | None = None  # data URI
    frames_total: int = 0
    problems: list[str] = field(default_factory=list)


def scene_preview(
    run_root: Path,
    scene_id: str,
    keyframe_rel: str | None,
    frames_dir: str | None,
    keyframe_end_rel: str | None = None,
    decoded: Mapping[str, Image.Image] | None = None,
) -> Preview:
    """Thumbnails and the animated preview of one scene, made once and cached beside its frames.

    ``decoded``: frames already decoded by the caller, by file name (``shown_frames`` says which
    are wanted), used instead of decoding those files again."""
    preview = Preview()
    keyframe, preview.keyframe_rel = _keyframe_path(run_root, scene_id, keyframe_rel)
    keyframe_end, preview.keyframe_end_rel = _keyframe_path(run_root, scene_id, keyframe_end_rel, end=True)
    folder = inside(run_root, frames_dir)
    frames = _frame_files(folder) if folder is not None and folder.is_dir() else []
    preview.frames_total = len(frames)
    if keyframe is None and keyframe_end is None and not frames:
        return preview
    if not SCENE_ID.match(scene_id):  # never make a folder named by an unexpected id
        preview.problems.append(f"no previews: unexpected scene id {scene_id!r}")
        return preview
    cache = run_root / scene_id / "preview"
    manifest = _cached_manifest(cache, keyframe, frames, keyframe_end, decoded or {})
    if manifest.get("keyframe"):
        preview.keyframe = _data_uri(cache / manifest["keyframe"], "image/jpeg")
    if manifest.get("keyframe_end"):
        preview.keyframe_end = _data_uri(cache / manifest["keyframe_end"], "image/jpeg")
    root = run_root.resolve()
    for thumb in manifest.get("strip") or []:
        index = thumb.get("index")
        if not isinstance(index, int) or not 0 <= index < len(frames):
            continue
        uri = _data_uri(cache / thumb["file"], "image/jpeg")
        if uri:
            rel = frames[index].resolve().relative_to(root).as_posix()  # only the strip's, not every frame's
            preview.strip.append(Thumb(index + 1, frames[index].name, rel, uri))
    anim = manifest.get("anim")
    if anim:
        preview.anim = _data_uri(cache / anim, _MIME.get(Path(anim).suffix, "image/webp"))
    preview.problems += [str(p) for p in manifest.get("problems") or []]
    return preview


def shown_frames(frames_dir: Path) -> frozenset[str]:
    """The names of the frame files the strip and the animation show, when the folder holds an
    image sequence (one animated file is read here, frame by frame, as before)."""
    frames = _frame_files(frames_dir) if frames_dir.is_dir() else []
    if len(frames) < 2:
        return frozenset()
    return frozenset(frames[i].name for i in _wanted(len(frames)))


def _wanted(count: int) -> set[int]:
    return set(_spread(count, STRIP_FRAMES)) | set(_spread(count, ANIM_FRAMES))


def _cached_manifest(
    cache: Path,
    keyframe: Path | None,
    frames: list[Path],
    keyframe_end: Path | None,
    decoded: Mapping[str, Image.Image],
) -> dict[str, Any]:
    """The manifest of the previews in ``cache``: read when its sources are unchanged, else made anew."""
    manifest_path = cache / "manifest.json"
    fingerprint = {
        "version": PREVIEW_VERSION,
        "keyframe": _fingerprint([keyframe]),
        "keyframe_end": _fingerprint([keyframe_end]),
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
        strip = manifest.get("strip")
        wanted = [manifest.get("keyframe"), manifest.get("keyframe_end"), manifest.get("anim")]
        wanted += [t.get("file") for t in strip if isinstance(t, dict)] if isinstance(strip, list) else []
        if not all((cache / name).is_file() for name in wanted if name):
            manifest = None
    if manifest is None:
        manifest = _make_previews(cache, keyframe, frames, decoded)
        _keyframe_preview(cache, keyframe_end, manifest, key="keyframe_end", label="end keyframe")
        manifest["source"] = fingerprint
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return manifest


def _keyframe_path(
    run_root: Path, scene_id: str, rel: str | None, *, end: bool = False
) -> tuple[Path | None, str | None]:
    """The keyframe the summary names, else where a run keeps it; the end keyframe (bookend mode)
    only where the summary names it (none in single mode)."""
    candidates = [rel]
    if SCENE_ID.match(scene_id) and not end:
        candidates += [f"{scene_id}/keyframe.png", f"story/keyframes/{scene_id}.png"]
    for candidate in candidates:
        path = inside(run_root, candidate)
        if path is not None and path.is_file():
            return path, path.relative_to(run_root.resolve()).as_posix()
    return None, None


def _keyframe_preview(
    cache: Path, keyframe: Path | None, manifest: dict[str, Any], *, key: str, label: str
) -> None:
    """``manifest[key]``: the keyframe's thumbnail file in ``cache`` (``<key>.jpg``), or None."""
    manifest[key] = None
    if keyframe is None:
        return
    try:
        with Image.open(keyframe) as image:
            atomic_write_bytes(cache / f"{key}.jpg", _jpeg(_scaled(image, KEYFRAME_WIDTH)))
        manifest[key] = f"{key}.jpg"
    except Exception as exc:  # noqa: BLE001 - a bad file never stops the report
        manifest["problems"].append(f"{label} {keyframe.name} could not be read: {exc}")


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
        # reducing_gap: a box reduction by a whole factor first, then LANCZOS for the rest; at a
        # thumbnail's size it looks the same and costs a third of a full LANCZOS from 1024 px.
        image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
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
            method=2,  # half the time of 4, a few per cent larger; 6 is fifty times slower
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


def _make_previews(
    cache: Path, keyframe: Path | None, frames: list[Path], decoded: Mapping[str, Image.Image]
) -> dict[str, Any]:
    manifest: dict[str, Any] = {"keyframe": None, "strip": [], "anim": None, "problems": []}
    _keyframe_preview(cache, keyframe, manifest, key="keyframe", label="keyframe")
    if not frames:
        return manifest
    images = _decoded_frames(frames, _wanted(len(frames)), manifest, decoded)
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
    frames: list[Path], wanted: set[int], manifest: dict[str, Any], decoded: Mapping[str, Image.Image]
) -> dict[int, list[Image.Image]]:
    """The wanted frames decoded and scaled, side by side (Pillow decodes and resizes without the
    GIL), or taken from ``decoded``; a frame that does not decode is a problem in the manifest, in
    frame order."""
    one_file = len(frames) == 1

    def decode(index: int) -> list[Image.Image] | str:
        path = frames[index]
        if path.name in decoded:
            return [_scaled(decoded[path.name], ANIM_WIDTH)]
        try:
            with Image.open(path) as image:
                if getattr(image, "n_frames", 1) > 1 and one_file:
                    return [_scaled(f.copy(), ANIM_WIDTH) for f in ImageSequence.Iterator(image)]
                image.load()
                return [_scaled(image, ANIM_WIDTH)]
        except Exception as exc:  # noqa: BLE001 - a bad file never stops the report
            return f"frame {path.name} could not be decoded: {exc}"

    order = sorted(wanted)
    if all(frames[i].name in decoded for i in order):  # only resizing left: no threads for that
        results = [decode(i) for i in order]
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(len(order), os.cpu_count() or 1))) as pool:
            results = list(pool.map(decode, order))
    images: dict[int, list[Image.Image]] = {}
    for index, result in zip(order, results, strict=True):
        if isinstance(result, str):
            manifest["problems"].append(result)
        else:
            images[index] = result
    return images
