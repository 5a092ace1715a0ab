"""The built-in keyframe renderer: a deterministic PNG per scene drawn from its words.

No model is needed: the picture is a pure function of the scene's text and the size (palette from
the prompt's words, shapes and a horizon from its hash), so the same story gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from pytest_gemdirect.rundir import atomic_write_bytes
from pytest_gemdirect.story.schema import SCENE_ID

_PALETTE: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("night", "moon", "midnight", "dark"), (18, 24, 64)),
    (("dawn", "sunrise", "morning"), (250, 178, 130)),
    (("sunset", "golden", "dusk", "amber"), (245, 146, 60)),
    (("fog", "mist", "overcast", "haze"), (168, 178, 190)),
    (("snow", "ice", "glacier", "frost", "winter"), (205, 228, 246)),
    (("forest", "garden", "fern", "tree", "leaf"), (42, 112, 64)),
    (("sea", "harbour", "harbor", "ocean", "bay", "water", "canal", "river"), (32, 92, 140)),
    (("neon", "city", "tram", "street"), (196, 44, 162)),
    (("desert", "sand", "salt"), (214, 176, 106)),
    (("fire", "candle", "lantern", "ember", "lamp"), (238, 118, 40)),
    (("rain", "storm", "thunder"), (70, 80, 102)),
    (("sky", "blue"), (96, 150, 220)),
)


def _colour(digest: bytes, offset: int) -> tuple[int, int, int]:
    return (digest[offset % 32], digest[(offset + 1) % 32], digest[(offset + 2) % 32])


def _palette(prompt: str, digest: bytes) -> list[tuple[int, int, int]]:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    found = [colour for keys, colour in _PALETTE if words & set(keys)]
    while len(found) < 2:
        found.append(_colour(digest, 3 * len(found)))
    return found


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, fill: Any) -> None:
    try:
        draw.text(xy, text, font=font, fill=fill)
    except (UnicodeEncodeError, UnicodeError, ValueError):  # a bitmap font without these glyphs
        draw.text(xy, text.encode("ascii", "replace").decode("ascii"), font=font, fill=fill)


def render_keyframe(scene: dict[str, Any], story_title: str, size: tuple[int, int]) -> Image.Image:
    """The keyframe image of one scene, a pure function of its text and ``size``."""
    width, height = size
    key = json.dumps(
        [scene["id"], scene["title"], scene["visual_prompt"], scene["motion_prompt"], story_title],
        ensure_ascii=False,
    )
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    top, bottom, *accents = _palette(scene["visual_prompt"], digest)
    gradient = Image.linear_gradient("L")
    gradient = gradient.rotate((digest[0] % 8) * 45, resample=Image.Resampling.BICUBIC, expand=False)
    gradient = gradient.resize((width, height), Image.Resampling.BICUBIC)
    image = ImageOps.colorize(gradient, black=top, white=bottom).convert("RGBA")

    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    shapes = 5 + digest[1] % 6
    for index in range(shapes):
        d = hashlib.sha256(digest + bytes([index])).digest()
        colour = accents[index % len(accents)] if accents and index % 3 == 0 else _colour(d, 4)
        fill = (*colour, 60 + d[7] % 120)
        x0 = d[8] * width // 256
        y0 = d[9] * height // 256
        extent = max(8, (min(width, height) * (20 + d[10] % 60)) // 200)
        kind = d[11] % 3
        if kind == 0:
            draw.ellipse((x0 - extent, y0 - extent, x0 + extent, y0 + extent), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + extent * 2, y0 + extent), fill=fill)
        else:
            draw.polygon(
                [(x0, y0 - extent), (x0 - extent, y0 + extent), (x0 + extent, y0 + extent)], fill=fill
            )
    # A horizon silhouette drawn from the prompt's words.
    ridge = [(0, height)]
    words = scene["visual_prompt"].split() or ["-"]
    steps = max(2, min(24, len(words)))
    for step in range(steps + 1):
        word = words[step % len(words)]
        rise = (sum(word.encode("utf-8")) % 97) / 97
        ridge.append((step * width // steps, int(height * (0.62 + 0.18 * rise))))
    ridge.append((width, height))
    draw.polygon(ridge, fill=(*_colour(digest, 20), 150))
    image = Image.alpha_composite(image, overlay)

    band = Image.new("RGBA", size, (0, 0, 0, 0))
    band_draw = ImageDraw.Draw(band)
    band_height = max(24, height // 5)
    band_draw.rectangle((0, height - band_height, width, height), fill=(0, 0, 0, 150))
    image = Image.alpha_composite(image, band)
    draw = ImageDraw.Draw(image)
    big = _font(max(10, band_height // 3))
    small = _font(max(8, band_height // 6))
    margin = max(4, width // 64)
    _draw_text(
        draw, (margin, height - band_height + margin // 2), f"{scene['id']}  {scene['title']}", big, "white"
    )
    line = textwrap.shorten(scene["visual_prompt"], width=max(20, width // 9), placeholder="...")
    _draw_text(draw, (margin, height - band_height // 3), line, small, (230, 230, 230))
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_keyframes(story: dict[str, Any], out_dir: Path, size: tuple[int, int] = (1024, 576)) -> list[Path]:
    """One PNG per scene, ``out_dir/scene-001.png`` …; the same story gives the same bytes."""
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ValueError(f"keyframe size must be at least 16x16, not {width}x{height}")
    scenes = story.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise ValueError("the story has no scenes to draw")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        scene_id = scene.get("id") if isinstance(scene, dict) else None
        if not isinstance(scene_id, str) or not SCENE_ID.match(scene_id):
            raise ValueError(f"scene id {scene_id!r} is not of the form scene-001")
    title = str(story.get("title", ""))

    def draw(scene: dict[str, Any]) -> Path:
        path = out_dir / f"{scene['id']}.png"
        atomic_write_bytes(path, png_bytes(render_keyframe(scene, title, (width, height))))
        return path

    if len(scenes) == 1:
        return [draw(scenes[0])]
    # Pillow draws and encodes without the GIL: the scenes are drawn side by side, each the same
    # pure function of its text as one at a time (the same bytes).
    with ThreadPoolExecutor(max_workers=min(len(scenes), os.cpu_count() or 1)) as pool:
        return list(pool.map(draw, scenes))
