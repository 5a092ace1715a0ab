"""The simulated node classes (loaders, image operations, SVD conditioning, sampler, decode).

Each implementation takes the run, its node id and its resolved inputs and returns the node's
outputs and its UI dict (``None``: no ``executed`` message). The save nodes are in ``save``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from pytest_gemdirect.sim.comfyui.errors import NodeFailure, full_type_name
from pytest_gemdirect.sim.comfyui.render import VIDEO_FAULTS, render_video, spoil
from pytest_gemdirect.sim.comfyui.values import Frames, Latent, Token, describe

if TYPE_CHECKING:
    from pytest_gemdirect.sim.comfyui.execution import Run

NodeImpl = Callable[["Run", str, dict[str, Any]], Awaitable[tuple[tuple[Any, ...], dict[str, Any] | None]]]
NODE_IMPLS: dict[str, NodeImpl] = {}


def register_node(*names: str) -> Callable[[NodeImpl], NodeImpl]:
    """Make the decorated coroutine the implementation of the node classes ``names``."""

    def register(fn: NodeImpl) -> NodeImpl:
        for name in names:
            NODE_IMPLS[name] = fn
        return fn

    return register


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


@register_node("LoadImage")
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
    return (Frames.of(images), masks), None


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


def _check_checkpoint(run: Run, name: str) -> None:
    if name not in run.state.checkpoints:
        raise NodeFailure(
            f"Model in folder 'checkpoints' with filename '{name}' not found.", "FileNotFoundError"
        )


@register_node("ImageOnlyCheckpointLoader")
async def _svd_loader(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name = str(inp["ckpt_name"])
    _check_checkpoint(run, name)
    await asyncio.sleep(run.state.step_seconds)
    return (
        Token("MODEL", "comfy.model_patcher.ModelPatcher", ckpt=name),
        Token("CLIP_VISION", "comfy.clip_vision.ClipVisionModel", ckpt=name),
        Token("VAE", "comfy.sd.VAE", ckpt=name),
    ), None


@register_node("CheckpointLoaderSimple")
async def _ckpt_loader(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name = str(inp["ckpt_name"])
    _check_checkpoint(run, name)
    return (
        Token("MODEL", "comfy.model_patcher.ModelPatcher", ckpt=name),
        Token("CLIP", "comfy.sd.CLIP", ckpt=name),
        Token("VAE", "comfy.sd.VAE", ckpt=name),
    ), None


@register_node("SVD_img2vid_Conditioning")
async def _svd_cond(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = frames_of(inp["init_image"])
    width, height, count = int(inp["width"]), int(inp["height"]), int(inp["video_frames"])
    positive = Token("CONDITIONING", "list", motion_bucket_id=inp.get("motion_bucket_id"), fps=inp.get("fps"))
    negative = Token("CONDITIONING", "list")
    latent = Latent(init_image=frames[0], width=width, height=height, frames=count)
    return (positive, negative, latent), None


@register_node("CLIPTextEncode")
async def _text_encode(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (Token("CONDITIONING", "list", text=str(inp["text"])),), None


@register_node("EmptyLatentImage")
async def _empty_latent(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    width, height, batch = int(inp["width"]), int(inp["height"]), int(inp["batch_size"])
    return (Latent(init_image=None, width=width, height=height, frames=batch),), None


@register_node("VideoLinearCFGGuidance")
async def _cfg_guidance(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (inp["model"],), None


@register_node("KSampler")
async def _ksampler(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    steps = max(1, int(inp["steps"]))
    latent = inp.get("latent_image")
    if not isinstance(latent, Latent):
        latent = Latent(None, 512, 512, 1)
    stall = run.fault("stall")
    half = max(1, steps // 2)
    for step in range(1, steps + 1):
        if stall and step == steps:
            await run.stall()
        if run.state.step_seconds:
            await asyncio.sleep(run.state.step_seconds)
        run.check_interrupt()
        await run.progress(node_id, step, steps)
        if step == half:
            await run.midpoint()
            if run.fail_this:
                raise run.simulated_failure(node_id)
    positive = inp.get("positive")
    text = positive.info.get("text") if isinstance(positive, Token) else None
    sampled = Latent(
        latent.init_image, latent.width, latent.height, latent.frames, int(inp.get("seed", 0)), True, text
    )
    return (sampled,), None


@register_node("VAEDecode")
async def _vae_decode(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    latent = inp.get("samples")
    if not isinstance(latent, Latent):
        latent = Latent(None, 512, 512, 1)
    # A recipe: the frames are drawn when a save node asks for them.
    return (await run.state.offload(render_video, latent),), None
