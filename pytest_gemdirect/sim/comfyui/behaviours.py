"""Every recorded class runs: a few by their own implementation, the rest by their output types.

Which behaviour covers which classes (``python benchmarks/sim_cost.py`` prints the whole list):

- **own implementation** (``nodes``, ``save``, ``video``, ``latents``): LoadImage (and LoadImageMask,
  LoadImageOutput, WebcamCapture), EmptyImage, ImageScale, ImageScaleBy, ImageCrop, ImageBatch,
  RepeatImageBatch, ImageFromBatch, ImageInvert, GetImageSize; SaveImage, PreviewImage, MaskPreview,
  SaveAnimatedWEBP, SaveAnimatedPNG, SaveImageWebsocket; CreateVideo, SaveVideo, SaveWEBM; the
  samplers (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced: a progress tick per
  step); PreviewAny.
- **by output type**, one output at a time, from the class's row of ``/object_info``:

  - the *n*-th output of a type passes the *n*-th input of that type through when there is one
    (ModelSamplingSD3's MODEL, WanImageToVideo's positive and negative CONDITIONING, ImageFlip's
    IMAGE…), except a LATENT of a class whose inputs give a shape (below);
  - LATENT: the shape its inputs imply (``latents``: width, height, batch_size, a video ``length``
    or ``video_frames``, start and end keyframes), else the picture an IMAGE input has (VAEEncode);
  - IMAGE: a LATENT input decoded (VAEDecode, VAEDecodeTiled…: the latent's frames at its size,
    moving pictures made from its keyframe(s) or prompt), else a MASK or VIDEO input's frames, else
    a picture of the prompt at the ``width`` x ``height`` asked for; MASK likewise;
  - VIDEO: an IMAGE input at the ``fps`` asked for, else frames of the prompt;
  - INT, FLOAT, STRING, BOOLEAN: the value of an input of that type, else 0, 0.0, "" or False;
  - CONDITIONING made from text: a handle holding the first STRING input (CLIPTextEncode…);
  - everything else (MODEL, CLIP, VAE, CLIP_VISION, CONTROL_NET, SAMPLER, SIGMAS, GUIDER, NOISE…):
    an opaque handle holding the node's literal inputs (a scheduler's ``steps``, a noise's seed);
    a loader checks first that the server has the model files it names;
  - an output node without outputs of its own implementation (CheckpointSave, SaveLatent…)
    reports no files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps

import pytest_gemdirect.sim.comfyui.nodes
import pytest_gemdirect.sim.comfyui.save
import pytest_gemdirect.sim.comfyui.video  # noqa: F401 - these three register their node classes
from pytest_gemdirect.sim.comfyui.catalog import declared_inputs, model_inputs, recorded_object_info
from pytest_gemdirect.sim.comfyui.errors import NodeFailure
from pytest_gemdirect.sim.comfyui.latents import latent_from_image, latent_from_inputs, makes_latent_shape
from pytest_gemdirect.sim.comfyui.registry import NODE_IMPLS, NodeImpl, NodeResult, register_node
from pytest_gemdirect.sim.comfyui.registry import NodeRun as Run
from pytest_gemdirect.sim.comfyui.render import render_text_image, render_video
from pytest_gemdirect.sim.comfyui.values import Frames, Latent, Token

PRIMITIVE_DEFAULTS: dict[str, Any] = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}
HANDLE_TYPE_NAMES = {
    "MODEL": "comfy.model_patcher.ModelPatcher",
    "CLIP": "comfy.sd.CLIP",
    "VAE": "comfy.sd.VAE",
    "CLIP_VISION": "comfy.clip_vision.ClipVisionModel",
    "CONDITIONING": "list",
    "VIDEO": "comfy_api.input_impl.VideoFromComponents",
}
DEFAULT_SIZE = (512, 512)
DEFAULT_VIDEO_FRAMES = 24


def implementation(class_type: str) -> NodeImpl:
    """The coroutine that runs ``class_type``: its own, or the behaviour by output type."""
    return NODE_IMPLS.get(class_type, by_output_type)


def behaviour_of(class_type: str) -> str:
    """A short name of the behaviour that covers ``class_type`` (for the benchmark's list)."""
    impl = NODE_IMPLS.get(class_type)
    if impl is not None:
        return f"own implementation ({impl.__module__.rsplit('.', 1)[-1]})"
    info = recorded_object_info()[class_type]
    outputs: list[str] = info.get("output", [])
    if not outputs:
        return "output node, no files"
    if class_type in model_inputs():
        return "loader: handles, model files checked"
    if "LATENT" in outputs and makes_latent_shape(declared_inputs(info)):
        return "latent of the shape its inputs give"
    kinds = sorted({t if t in ("IMAGE", "MASK", "LATENT", "VIDEO") else "handle/value" for t in outputs})
    return "by output type: " + ", ".join(kinds)


def behaviour_table() -> dict[str, list[str]]:
    """``{behaviour: [classes]}`` for every recorded class."""
    table: dict[str, list[str]] = {}
    for class_type in sorted(recorded_object_info()):
        table.setdefault(behaviour_of(class_type), []).append(class_type)
    return table


def _typed_inputs(class_info: dict[str, Any], inputs: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(name, declared type, value) of the given inputs, in the class's declared order."""
    declared = declared_inputs(class_info)
    order = class_info.get("input_order", {})
    names = [*order.get("required", []), *order.get("optional", [])] or list(declared)
    found = []
    for name in names:
        if name in inputs and name in declared:
            kind = declared[name][0]
            found.append((name, kind if isinstance(kind, str) else "COMBO", inputs[name]))
    return found


def _check_models(run: Run, class_type: str, inputs: dict[str, Any]) -> None:
    for name, folder in model_inputs().get(class_type, {}).items():
        value = inputs.get(name)
        if isinstance(value, str) and value != "pixel_space" and not run.state.models.has(folder, value):
            raise NodeFailure(
                f"Model in folder '{folder}' with filename '{value}' not found.", "FileNotFoundError"
            )


class _Outputs:
    """Makes a class's outputs one at a time from its typed inputs."""

    def __init__(self, run: Run, class_type: str, typed: list[tuple[str, str, Any]]) -> None:
        self.run = run
        self.class_type = class_type
        self.typed = typed
        self.values = {name: value for name, _, value in typed}
        self.declared = declared_inputs(recorded_object_info()[class_type])
        self.used: dict[str, int] = {}

    def of_type(self, kind: str) -> list[Any]:
        return [value for _, declared, value in self.typed if declared == kind]

    def literal(self) -> dict[str, Any]:
        return {n: v for n, v in self.values.items() if isinstance(v, (int, float, str, bool))}

    def text(self) -> str:
        return next((v for v in self.of_type("STRING") if isinstance(v, str)), "")

    def size(self) -> tuple[int, int]:
        try:
            return max(8, int(self.values["width"])), max(8, int(self.values["height"]))
        except (KeyError, TypeError, ValueError):
            return DEFAULT_SIZE

    def picture(self, count: int = 1) -> Frames:
        width, height = self.size()
        if count > 1:
            return render_video(Latent(None, width, height, count, self._seed(), text=self.text()))
        return Frames.of([render_text_image(self.text(), self._seed(), width, height)])

    def _seed(self) -> int:
        for name in ("seed", "noise_seed"):
            if isinstance(self.values.get(name), int):
                return int(self.values[name])
        return 0

    def make(self, kind: str) -> Any:
        index = self.used.get(kind, 0)
        self.used[kind] = index + 1
        same = [v for v in self.of_type(kind) if not (kind == "LATENT" and not isinstance(v, Latent))]
        if kind == "LATENT" and makes_latent_shape(self.declared):
            return latent_from_inputs(self.class_type, self.values)
        if same:
            return same[min(index, len(same) - 1)]
        maker: Callable[[], Any] | None = getattr(self, f"_make_{kind.lower()}", None)
        if maker is not None:
            return maker()
        if kind in PRIMITIVE_DEFAULTS:
            return PRIMITIVE_DEFAULTS[kind]
        return Token(kind, HANDLE_TYPE_NAMES.get(kind, "object"), **self.literal())

    def _make_latent(self) -> Latent:
        images = [v for v in self.of_type("IMAGE") if isinstance(v, Frames)]
        if images:
            return latent_from_image(images[0])
        width, height = self.size()
        return Latent(None, width, height, 1)

    def _make_image(self) -> Frames:
        for latent in self.of_type("LATENT"):
            if isinstance(latent, Latent):
                return render_video(latent)
        for mask in self.of_type("MASK"):
            if isinstance(mask, Frames):
                return mask.map(lambda f: f.convert("RGB"), mask.size)
        for clip in self.of_type("VIDEO"):
            if isinstance(clip, Token) and isinstance(clip.info.get("frames"), Frames):
                frames: Frames = clip.info["frames"]
                return frames
        return self.picture()

    def _make_mask(self) -> Frames:
        for image in self.of_type("IMAGE"):
            if isinstance(image, Frames):
                return image.map(lambda f: ImageOps.grayscale(f), image.size)
        return Frames.of([Image.new("L", self.size(), 0)])

    def _make_video(self) -> Token:
        images = [v for v in self.of_type("IMAGE") if isinstance(v, Frames)]
        frames = images[0] if images else self.picture(DEFAULT_VIDEO_FRAMES)
        try:
            fps = float(self.values.get("fps", 24.0))
        except (TypeError, ValueError):
            fps = 24.0
        return Token("VIDEO", HANDLE_TYPE_NAMES["VIDEO"], frames=frames, fps=fps)

    def _make_conditioning(self) -> Token:
        return Token("CONDITIONING", "list", text=self.text())


async def by_output_type(run: Run, node_id: str, inp: dict[str, Any]) -> NodeResult:
    """Any class without an implementation of its own: its outputs made from their types alone."""
    class_type = str(run.prompt[node_id]["class_type"])
    class_info = recorded_object_info().get(class_type, {})
    _check_models(run, class_type, inp)
    outputs = _Outputs(run, class_type, _typed_inputs(class_info, inp))
    return tuple(outputs.make(kind) for kind in class_info.get("output", [])), None


@register_node("PreviewAny")
async def _preview_any(run: Run, node_id: str, inp: dict[str, Any]) -> NodeResult:
    """Shows its input as text, as ComfyUI's PreviewAny does (``{"text": [...]}``)."""
    value = inp.get("source")
    text = value if isinstance(value, str) else str(value)
    return (), {"text": [text]}
