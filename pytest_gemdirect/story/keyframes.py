"""The built-in keyframe renderer: a deterministic PNG per scene drawn from its words.

No model is needed: the picture is a pure function of the scene's text and the size (palette from
the prompt's words, shapes and a horizon from its hash), so the same story gives the same bytes.

Bookend mode wants a second picture per scene, its last frame: the same scene *later*, so that a
first-last-frame video has somewhere to go. :func:`render_keyframe` with ``moment="end"`` draws the
same shapes moved and grown (the camera pushed in), the light from another side and the colours
towards evening; :func:`later_keyframe` does the like for a start keyframe that came as a picture
(a push-in towards one side and the evening light).
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


MOMENTS: tuple[str, ...] = ("start", "end")
_EVENING = (40, 30, 72)  # the end keyframe's colours lean towards this
_EVENING_SHARE = 0.35


def keyframe_name(scene_id: str, moment: str = "start") -> str:
    """``scene-001.png`` (the start) or ``scene-001-end.png``."""
    if moment not in MOMENTS:
        raise ValueError(f"moment must be one of {', '.join(MOMENTS)}, not {moment!r}")
    return f"{scene_id}.png" if moment == "start" else f"{scene_id}-end.png"


def _later(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = (round(c + (e - c) * _EVENING_SHARE) for c, e in zip(colour, _EVENING, strict=True))
    return (r, g, b)


def render_keyframe(
    scene: dict[str, Any], story_title: str, size: tuple[int, int], *, moment: str = "start"
) -> Image.Image:
    """The keyframe image of one scene, a pure function of its text, ``size`` and ``moment``.

    ``moment="end"``: the same scene later (shapes moved and grown, light turned, colours towards
    evening), for the last frame of a bookend scene.
    """
    keyframe_name(scene["id"], moment)  # checks the moment
    end = moment == "end"
    width, height = size
    key = json.dumps(
        [scene["id"], scene["title"], scene["visual_prompt"], scene["motion_prompt"], story_title],
        ensure_ascii=False,
    )
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    top, bottom, *accents = _palette(scene["visual_prompt"], digest)
    if end:
        top, bottom, accents = _later(top), _later(bottom), [_later(a) for a in accents]
    turn, scroll, lift = (90, 1, 0.06) if end else (0, 0, 0.0)
    gradient = Image.linear_gradient("L")
    gradient = gradient.rotate((digest[0] % 8) * 45 + turn, resample=Image.Resampling.BICUBIC, expand=False)
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
        if end:  # each shape travels its own way and comes closer
            x0 += (d[12] - 128) * width // 640
            y0 += (d[13] - 128) * height // 1280
            extent = extent * 6 // 5
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
        word = words[(step + scroll) % len(words)]  # the end: the horizon has scrolled by one word
        rise = (sum(word.encode("utf-8")) % 97) / 97
        ridge.append((step * width // steps, int(height * (0.62 - lift + 0.18 * rise))))
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
    label = f"{scene['id']}  {scene['title']}" + ("  (end)" if end else "")
    _draw_text(draw, (margin, height - band_height + margin // 2), label, big, "white")
    line = textwrap.shorten(scene["visual_prompt"], width=max(20, width // 9), placeholder="...")
    _draw_text(draw, (margin, height - band_height // 3), line, small, (230, 230, 230))
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def later_keyframe(image: Image.Image, key: str) -> Image.Image:
    """The same picture later: pushed in by a seventh towards one side (chosen by ``key``), the
    colours towards evening. For the end of a bookend scene whose start came as a picture."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    rgb = image.convert("RGB")
    width, height = rgb.size
    crop_w, crop_h = max(1, width * 6 // 7), max(1, height * 6 // 7)
    left = (width - crop_w) * (digest[0] % 3) // 2
    top = (height - crop_h) * (digest[1] % 3) // 2
    pushed = rgb.crop((left, top, left + crop_w, top + crop_h)).resize(
        (width, height), Image.Resampling.LANCZOS
    )
    return Image.blend(pushed, Image.new("RGB", (width, height), _EVENING), _EVENING_SHARE * 0.6)


def render_keyframes(
    story: dict[str, Any], out_dir: Path, size: tuple[int, int] = (1024, 576), *, moment: str = "start"
) -> list[Path]:
    """One PNG per scene, ``out_dir/scene-001.png`` … (``scene-001-end.png`` … for the end moment);
    the same story gives the same bytes."""
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
        path = out_dir / keyframe_name(scene["id"], moment)
        atomic_write_bytes(path, png_bytes(render_keyframe(scene, title, (width, height), moment=moment)))
        return path

    if len(scenes) == 1:
        return [draw(scenes[0])]
    # Pillow draws and encodes without the GIL: the scenes are drawn side by side, each the same
    # pure function of its text as one at a time (the same bytes).
    with ThreadPoolExecutor(max_workers=min(len(scenes), os.cpu_count() or 1)) as pool:
        return list(pool.map(draw, scenes))
