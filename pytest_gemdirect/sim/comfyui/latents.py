"""The latent side: the shape a latent node's inputs imply, and the samplers that keep it.

A latent here is its shape and what it will picture (``values.Latent``): width and height, the
frames it decodes to, the keyframe(s) it starts from, the prompt and seed that sampled it.

- Any class with a LATENT output and ``width``/``height``, ``length`` or ``video_frames`` inputs
  makes a new latent of that shape. A video ``length`` decodes as ComfyUI's video VAEs do: WAN,
  Hunyuan and the like compress 4 frames into one latent frame (``(length - 1) // 4 + 1``), which
  decodes back to ``((length - 1) // 4) * 4 + 1`` frames (49 for 49); Mochi 6, LTXV and Cosmos 8.
  SVD's ``video_frames`` is the frame count itself. ``batch_size`` multiplies.
- Its start keyframe is the first IMAGE input (``start_image``, ``init_image``, ``image``,
  ``pixels``…); ``end_image`` is a first-last-frame video's last picture.
- The samplers (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced) send a progress
  tick per step (``steps``, the advanced sampler's ``start_at_step``..``end_at_step``, or the steps
  of the sigmas a scheduler made) and keep the latent's shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

from PIL import Image

from pytest_gemdirect.sim.comfyui.catalog import recorded_object_info
from pytest_gemdirect.sim.comfyui.registry import NodeRun as Run
from pytest_gemdirect.sim.comfyui.registry import register_node
from pytest_gemdirect.sim.comfyui.values import Frames, Latent, Token

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
SHAPE_INPUTS = ("width", "height", "length", "video_frames")
DEFAULT_STEPS = 20
TEMPORAL_COMPRESSION = {"Mochi": 6, "LTXV": 8, "Cosmos": 8}  # by class-name part; else 4


def temporal_compression(class_type: str) -> int:
    for part, factor in TEMPORAL_COMPRESSION.items():
        if part in class_type:
            return factor
    return 4


def decoded_frames(class_type: str, length: int) -> int:
    """The frames a video latent of ``length`` decodes to (49 -> 13 latent frames -> 49)."""
    factor = temporal_compression(class_type)
    return ((max(1, length) - 1) // factor) * factor + 1


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _first_picture(value: Any) -> Image.Image | None:
    if isinstance(value, Frames) and len(value):
        return value[0]
    return None


def makes_latent_shape(declared: dict[str, Any]) -> bool:
    """True for a class whose inputs say the shape of the latent it makes."""
    return any(name in declared for name in SHAPE_INPUTS)


def latent_from_inputs(class_type: str, inputs: dict[str, Any]) -> Latent:
    """The latent a latent node makes from its (resolved) inputs."""
    given = next((v for v in inputs.values() if isinstance(v, Latent)), None)
    images = [v for k, v in inputs.items() if isinstance(v, Frames) and k != "end_image"]
    start = _first_picture(images[0]) if images else (given.init_image if given else None)
    width = _int(inputs.get("width"), given.width if given else (images[0].size[0] if images else 512))
    height = _int(inputs.get("height"), given.height if given else (images[0].size[1] if images else 512))
    if "video_frames" in inputs:
        frames = max(1, _int(inputs["video_frames"], 1))
    elif "length" in inputs:
        frames = decoded_frames(class_type, _int(inputs["length"], 1))
    elif given is not None:
        frames = given.frames
    else:
        frames = len(images[0]) if images and "width" not in inputs else 1
    frames *= max(1, _int(inputs.get("batch_size"), 1))
    end = _first_picture(inputs.get("end_image"))
    return Latent(start, width, height, frames, end_image=end, text=given.text if given else None)


def latent_from_image(frames: Frames) -> Latent:
    """VAEEncode and the like: the pictures' size and count, the first as the start keyframe."""
    width, height = frames.size
    return Latent(_first_picture(frames), width, height, max(1, len(frames)))


def sampler_steps(class_type: str, inputs: dict[str, Any]) -> int:
    """How many progress ticks a sampler sends, as ComfyUI's progress bar counts them."""
    if "steps" in inputs:
        steps = max(1, _int(inputs["steps"], DEFAULT_STEPS))
        if class_type == "KSamplerAdvanced":
            start = _int(inputs.get("start_at_step"), 0)
            end = min(_int(inputs.get("end_at_step"), steps), steps)
            return max(1, end - start)
        return steps
    sigmas = inputs.get("sigmas")
    if isinstance(sigmas, Token):
        return max(1, _int(sigmas.info.get("steps"), DEFAULT_STEPS))
    return DEFAULT_STEPS


@register_node(*SAMPLER_CLASSES)
async def _sampler(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    class_type = str(run.prompt[node_id]["class_type"])
    steps = sampler_steps(class_type, inp)
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
    if isinstance(inp.get("guider"), Token):
        positive = inp["guider"].info.get("positive")
    text = positive.info.get("text") if isinstance(positive, Token) else None
    seed = _int(inp.get("seed", inp.get("noise_seed")), 0)
    noise = inp.get("noise")
    if isinstance(noise, Token):
        seed = _int(noise.info.get("noise_seed"), seed)
    sampled = latent.replace(seed=seed, sampled=True, text=text if text is not None else latent.text)
    outputs = len(recorded_object_info().get(class_type, {}).get("output", [])) or 1
    return (sampled,) * outputs, None
