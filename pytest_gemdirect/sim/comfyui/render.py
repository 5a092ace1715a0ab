"""Pictures for the simulated generations: a moving camera over the keyframe, or a text picture."""

from __future__ import annotations

import hashlib

from PIL import Image, ImageDraw, ImageOps

from pytest_gemdirect.sim.comfyui.values import Frames, Latent

VIDEO_FAULTS = ("frozen", "black-frames", "short", "wrong-size")  # faults that spoil a decoded video


def render_text_image(text: str, seed: int, width: int, height: int) -> Image.Image:
    """A text-to-image stand-in: a picture that is a pure function of prompt and seed."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    top, bottom = tuple(digest[0:3]), tuple(digest[3:6])
    gradient = Image.linear_gradient("L").resize((width, height), Image.Resampling.BICUBIC)
    image = ImageOps.colorize(gradient, black=top, white=bottom)
    draw = ImageDraw.Draw(image)
    for index in range(6):
        d = hashlib.sha256(digest + bytes([index])).digest()
        x, y = d[0] * width // 256, d[1] * height // 256
        r = max(4, min(width, height) * (10 + d[2] % 30) // 100)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(d[3:6]))
    return image


def render_video(latent: Latent) -> Frames:
    """The decoded video: the keyframe under a slow zoom and pan with a dot crossing the bottom.

    Only the fitted keyframe is held; each frame is drawn when a save node asks for it.
    """
    width, height, count = max(8, latent.width), max(8, latent.height), max(1, latent.frames)
    return _render(latent, width, height, count)


def spoil(frames: Frames, faults: frozenset[str]) -> Frames:
    """The frames a save node gets under the VIDEO_FAULTS on for its scene.

    Applied where the frames are saved, not where they are decoded: a decode that comes from the
    cache (another scene's graph with the same nodes) is spoiled all the same.
    """
    if not faults or not len(frames):
        return frames
    if "short" in faults:
        frames = Frames(max(1, len(frames) // 2), frames.__getitem__, frames.key, frames.size)
    if "wrong-size" in faults:
        width, height = frames.size
        half = (max(8, width // 2), max(8, height // 2))
        frames = frames.map(lambda f: f.resize(half, Image.Resampling.BILINEAR), half)
    if "frozen" in faults:
        frames = Frames.of([frames[0]]).repeat(len(frames))
    if "black-frames" in faults:
        frames = _blacken(frames)
    return frames


def _blacken(frames: Frames) -> Frames:
    """black-frames: frames 1, 5, 9, ... nearly all zero (a dim speck keeps them from being exactly 0)."""
    black = Image.new("RGB", frames.size, (0, 0, 0))
    ImageDraw.Draw(black).rectangle((0, 0, 3, 3), fill=(6, 6, 6))

    def draw(index: int) -> Image.Image:
        return black if index % 4 == 1 else frames[index]

    return Frames(
        len(frames), draw, lambda i: ("black", id(black)) if i % 4 == 1 else frames.key(i), frames.size
    )


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    return ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.BILINEAR)


def _render(latent: Latent, width: int, height: int, count: int) -> Frames:
    if latent.init_image is not None:
        base = _fit(latent.init_image, width, height)
    elif latent.text is not None:
        base = render_text_image(latent.text, latent.seed, width, height)
    else:
        base = render_text_image("", latent.seed, width, height)
    if count == 1:
        return Frames.of([base])
    end = _fit(latent.end_image, width, height) if latent.end_image is not None else None
    radius = max(2, min(width, height) // 40)

    def draw_frame(k: int) -> Image.Image:
        t = k / (count - 1)
        picture = base if end is None else Image.blend(base, end, t)  # first-last-frame: base to end
        zoom = 1.0 + 0.12 * t  # a slow zoom in while panning right
        box_w, box_h = width / zoom, height / zoom
        x0 = (width - box_w) * t
        y0 = (height - box_h) / 2
        frame = picture.resize(
            (width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + box_w, y0 + box_h)
        )
        draw = ImageDraw.Draw(frame)
        cx = radius * 2 + (width - radius * 4) * t
        cy = height - radius * 2
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 255, 255), outline=(0, 0, 0)
        )
        return frame

    return Frames(count, draw_frame, size=(width, height))
