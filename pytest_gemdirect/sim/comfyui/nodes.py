"""The image nodes the simulator runs as ComfyUI does: LoadImage, the batch and size operations.

Each implementation takes the run, its node id and its resolved inputs and returns the node's
outputs and its UI dict (``None``: no ``executed`` message). The save nodes are in ``save`` and
``video``, the latent side in ``latents``, every other class in ``behaviours`` (by output type).
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image, ImageOps

from pytest_gemdirect.sim.comfyui.errors import NodeFailure, full_type_name
from pytest_gemdirect.sim.comfyui.registry import NodeRun as Run
from pytest_gemdirect.sim.comfyui.registry import register_node
from pytest_gemdirect.sim.comfyui.render import VIDEO_FAULTS, spoil
from pytest_gemdirect.sim.comfyui.values import Frames, describe

RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def frames_of(value: Any) -> Frames:
    """An IMAGE input as a batch of frames (drawn lazily); anything else fails like a bad tensor."""
    if isinstance(value, Frames):
        return value
    if isinstance(value, list) and all(isinstance(v, Image.Image) for v in value):
        return Frames.of(value)
    raise NodeFailure(f"expected IMAGE, got {describe(value)}", "TypeError")


def output_frames(run: Run, value: Any) -> Frames:
    """The IMAGE input of a save node, spoiled by the video faults on for the run's scene."""
    return spoil(frames_of(value), frozenset(name for name in VIDEO_FAULTS if run.fault(name)))


@register_node("LoadImage", "LoadImageOutput", "WebcamCapture")
async def _load_image(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name, folder = run.state.annotated_filepath(str(inp["image"]))
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise NodeFailure(f"[Errno 2] No such file or directory: '{path}'", "FileNotFoundError")

    def load() -> tuple[list[Image.Image], list[Image.Image]]:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgba = im.convert("RGBA")
        rgb = rgba.convert("RGB")
        mask = ImageOps.invert(rgba.getchannel("A"))
        return [rgb], [mask]

    try:
        images, masks = await run.state.offload(load)
    except OSError as exc:
        raise NodeFailure(str(exc), full_type_name(type(exc))) from None
    return (Frames.of(images), Frames.of(masks)), None


@register_node("EmptyImage")
async def _empty_image(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    color = int(inp.get("color", 0))
    rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
    image = Image.new("RGB", (max(1, int(inp["width"])), max(1, int(inp["height"]))), rgb)
    return (Frames.of([image]).repeat(max(1, int(inp.get("batch_size", 1)))),), None


@register_node("ImageScale")
async def _image_scale(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = frames_of(inp["image"])
    width, height = int(inp["width"]), int(inp["height"])
    method = RESAMPLE.get(str(inp.get("upscale_method")), Image.Resampling.BILINEAR)
    crop = inp.get("crop") == "center"
    if width == 0 and height == 0:
        return (frames,), None

    def scale(frame: Image.Image) -> Image.Image:
        w = width or max(1, round(frame.width * height / frame.height))
        h = height or max(1, round(frame.height * width / frame.width))
        if crop:
            return ImageOps.fit(frame, (w, h), method=method)
        return frame.resize((w, h), method)

    return (frames.map(scale, (width, height) if width and height else None),), None


@register_node("RepeatImageBatch")
async def _repeat(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (frames_of(inp["image"]).repeat(int(inp["amount"])),), None


@register_node("ImageCrop")
async def _image_crop(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    """As ComfyUI's: x and y are kept inside the picture, a box past its edge is cut at the edge."""
    frames = frames_of(inp["image"])
    width, height = frames.size
    x, y = min(int(inp["x"]), width - 1), min(int(inp["y"]), height - 1)
    box = (x, y, min(x + int(inp["width"]), width), min(y + int(inp["height"]), height))
    return (frames.map(lambda f: f.crop(box), (box[2] - box[0], box[3] - box[1])),), None


@register_node("ImageBatch")
async def _image_batch(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    """image1's frames then image2's, image2 scaled to image1's size first (bilinear, centre crop)."""
    first, second = frames_of(inp["image1"]), frames_of(inp["image2"])
    if second.size != first.size:
        size = first.size
        second = second.map(lambda f: ImageOps.fit(f, size, method=Image.Resampling.BILINEAR), size)
    return (first.concat(second),), None


@register_node("ImageInvert")
async def _invert(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = frames_of(inp["image"])
    return (frames.map(lambda f: ImageOps.invert(f.convert("RGB")), frames.size),), None


@register_node("ImageScaleBy")
async def _image_scale_by(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = frames_of(inp["image"])
    width, height = frames.size
    scale = float(inp["scale_by"])
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = RESAMPLE.get(str(inp.get("upscale_method")), Image.Resampling.BILINEAR)
    return (frames.map(lambda f: f.resize(size, method), size),), None


@register_node("LoadImageMask")
async def _load_image_mask(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    """The chosen channel of the file (alpha inverted, as ComfyUI's mask is 1 where it is transparent)."""
    (images, masks), _ = await _load_image(run, node_id, inp)
    channel = str(inp.get("channel", "alpha"))
    if channel == "alpha":
        return (masks,), None
    band = {"red": 0, "green": 1, "blue": 2}.get(channel, 0)
    return (images.map(lambda f: f.getchannel(band), images.size),), None


@register_node("ImageFromBatch")
async def _image_from_batch(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    """``length`` frames from ``batch_index`` (both kept inside the batch, as ComfyUI does)."""
    frames = frames_of(inp["image"])
    start = min(int(inp["batch_index"]), max(0, len(frames) - 1))
    count = min(len(frames) - start, int(inp["length"]))
    picked = Frames(count, lambda i: frames[start + i], lambda i: frames.key(start + i), frames.size)
    return (picked,), None


@register_node("GetImageSize")
async def _get_image_size(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = frames_of(inp["image"])
    width, height = frames.size
    return (width, height, len(frames)), None
