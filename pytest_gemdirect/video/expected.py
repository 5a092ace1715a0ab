"""What a ComfyUI workflow (API format) should produce: frame count, size and rate at its save node.

The checks need an expected frame count and size, and the only place that knows them is the
workflow the scene ran. This walks back from a save node along the image/latent links and works
out the batch (frames) and size the known nodes make (SVD conditioning, empty latents and
images, scaling, batch repeats), passing through the nodes that keep them (samplers, VAE decode,
video assembly…). Anything it cannot know is None: a None is "not checked", never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SAVE_CLASSES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveWEBM",
        "SaveVideo",
        "SaveImageWebsocket",
        "VHS_VideoCombine",
    }
)
"""Output nodes whose files (or messages) carry the frames."""

RATE_CLASSES = frozenset(
    {"SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "CreateVideo", "VHS_VideoCombine"}
)
"""Nodes whose ``fps`` (``frame_rate``) input is the rate the frames are saved at."""

VIDEO_LATENT_STRIDES = {
    **dict.fromkeys(
        (
            "Wan22ImageToVideoLatent",
            "WanImageToVideo",
            "WanFirstLastFrameToVideo",
            "WanFunControlToVideo",
            "Wan22FunControlToVideo",
            "WanFunInpaintToVideo",
            "WanCameraImageToVideo",
            "WanVaceToVideo",
            "WanPhantomSubjectToVideo",
            "WanTrackToVideo",
            "WanSoundImageToVideo",
            "WanHuMoImageToVideo",
            "WanAnimateToVideo",
            "EmptyHunyuanLatentVideo",
            "HunyuanImageToVideo",
        ),
        4,
    ),
    "EmptyLTXVLatentVideo": 8,
    "LTXVImgToVideo": 8,
}
"""Video latent nodes and their VAE's time stride: ``length`` L decodes to ((L-1)//stride)*stride+1 frames."""

# Inputs that carry the picture through a node, in the order they are tried.
_CARRIERS = ("images", "image", "video", "samples", "latent_image", "latent", "pixels", "samples1", "image1")
_MAX_DEPTH = 200


@dataclass(frozen=True)
class Expected:
    """Expected frames, width, height and rate of a save node's output; None where unknown."""

    frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames_from: str | None = field(default=None, compare=False)
    """Where the count comes from, for messages: "node 5 (WanImageToVideo) length 49"."""

    @property
    def size(self) -> tuple[int, int] | None:
        return (self.width, self.height) if self.width and self.height else None


UNKNOWN = Expected()


def save_nodes(workflow: Mapping[str, Any]) -> list[str]:
    """Ids of the save nodes in ``workflow``, in id order (numbers as numbers)."""
    ids = [
        nid
        for nid, node in workflow.items()
        if isinstance(node, Mapping) and node.get("class_type") in SAVE_CLASSES
    ]
    return sorted(ids, key=lambda nid: (0, int(nid), "") if str(nid).isdigit() else (1, 0, str(nid)))


def expected_outputs(workflow: Mapping[str, Any]) -> dict[str, Expected]:
    """The ``Expected`` of each save node, by node id."""
    return {nid: _Walker(workflow).shape(nid) for nid in save_nodes(workflow)}


def expected_output(workflow: Mapping[str, Any], node_id: str | None = None) -> Expected:
    """The ``Expected`` of save node ``node_id``, or of all save nodes where they agree (None where not)."""
    if node_id is not None:
        return _Walker(workflow).shape(str(node_id))
    shapes = list(expected_outputs(workflow).values())
    if not shapes:
        return UNKNOWN
    first = shapes[0]
    return Expected(
        *(getattr(first, name) if all(getattr(s, name) == getattr(first, name) for s in shapes) else None
          for name in ("frames", "width", "height", "fps", "frames_from"))
    )  # fmt: skip


def _int(value: Any) -> int | None:
    """A positive whole number from a literal input; None for a link, a zero ("keep"), or anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or value != int(value):
        return None
    return int(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def _video_latent(inputs: Mapping[str, Any], stride: int, node: str) -> Expected:
    """A video latent of ``length`` frames (times ``batch_size`` videos), as its VAE decodes it."""
    length, batch = _int(inputs.get("length")), _int(inputs.get("batch_size")) or 1
    frames = ((length - 1) // stride) * stride + 1 if length else None
    origin = f"{node} length {length}" + (f" x batch_size {batch}" if batch > 1 else "") if length else None
    return Expected(
        _times(frames, batch), _int(inputs.get("width")), _int(inputs.get("height")), frames_from=origin
    )


def _times(a: int | None, b: int | None) -> int | None:
    return a * b if a is not None and b is not None else None


class _Walker:
    """Works out the shape each node outputs, from the save node back to its sources."""

    def __init__(self, workflow: Mapping[str, Any]) -> None:
        self.workflow = workflow
        self._seen: set[str] = set()
        self._rules: dict[str, Callable[[Mapping[str, Any], int], Expected]] = {
            "EmptyLatentImage": self._empty,
            "EmptySD3LatentImage": self._empty,
            "EmptyImage": self._empty,
            "LoadImage": lambda _inputs, _depth: Expected(frames=1),
            "ImageScale": self._scale,
            "LatentUpscale": self._scale,
            "ImageScaleBy": self._scale_by,
            "LatentUpscaleBy": self._scale_by,
            "RepeatImageBatch": self._repeat,
            "RepeatLatentBatch": self._repeat,
            "ImageBatch": self._batch,
            "ImageCrop": self._crop,
        }

    def shape(self, node_id: str, depth: int = 0) -> Expected:
        node = self.workflow.get(node_id)
        if not isinstance(node, Mapping) or node_id in self._seen or depth > _MAX_DEPTH:
            return UNKNOWN
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            return UNKNOWN
        self._seen.add(node_id)
        try:
            kind = str(node.get("class_type"))
            rule = self._rules.get(kind)
            if kind in VIDEO_LATENT_STRIDES:
                shape = _video_latent(inputs, VIDEO_LATENT_STRIDES[kind], f"node {node_id} ({kind})")
            elif kind == "SVD_img2vid_Conditioning":
                shape = self._svd(inputs, f"node {node_id} ({kind})")
            else:
                shape = rule(inputs, depth) if rule else self._carried(inputs, depth)
            fps = _num(inputs.get("fps")) or _num(inputs.get("frame_rate")) if kind in RATE_CLASSES else None
            shape = replace(shape, fps=fps) if fps else shape
            if shape.frames is not None and shape.frames_from is None:  # a node that makes its own count
                shape = replace(shape, frames_from=f"node {node_id} ({kind})")
            return shape
        finally:
            self._seen.discard(node_id)

    def _from(self, inputs: Mapping[str, Any], name: str, depth: int) -> Expected:
        link = inputs.get(name)
        if isinstance(link, list) and len(link) == 2 and isinstance(link[0], (str, int)):
            return self.shape(str(link[0]), depth + 1)
        return UNKNOWN

    def _carried(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        for name in _CARRIERS:
            if isinstance(inputs.get(name), list):
                return self._from(inputs, name, depth)
        return UNKNOWN

    def _svd(self, inputs: Mapping[str, Any], node: str) -> Expected:
        """SVD makes ``video_frames`` frames; its ``fps`` is the rate they were made for (the clip's rate)."""
        frames = _int(inputs.get("video_frames"))
        return Expected(
            frames,
            _int(inputs.get("width")),
            _int(inputs.get("height")),
            _num(inputs.get("fps")),
            f"{node} video_frames {frames}" if frames else None,
        )

    def _empty(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        return Expected(_int(inputs.get("batch_size")), _int(inputs.get("width")), _int(inputs.get("height")))

    def _scale(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        source = self._carried(inputs, depth)
        width, height = _int(inputs.get("width")), _int(inputs.get("height"))
        if width is None or height is None:  # 0 keeps the aspect: known only from the source's size
            return Expected(source.frames, fps=source.fps, frames_from=source.frames_from)
        return Expected(source.frames, width, height, source.fps, source.frames_from)

    def _scale_by(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        source = self._carried(inputs, depth)
        factor = _num(inputs.get("scale_by"))
        if factor is None or source.width is None or source.height is None:
            return Expected(source.frames, fps=source.fps, frames_from=source.frames_from)
        return Expected(
            source.frames,
            round(source.width * factor),
            round(source.height * factor),
            source.fps,
            source.frames_from,
        )

    def _repeat(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        source = self._carried(inputs, depth)
        amount = _int(inputs.get("amount"))
        frames = _times(source.frames, amount)
        return replace(source, frames=frames, frames_from=None)

    def _crop(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        """ComfyUI keeps x and y inside the picture and cuts a box that goes past its edge."""
        source = self._carried(inputs, depth)
        width, height = _int(inputs.get("width")), _int(inputs.get("height"))
        x, y = inputs.get("x"), inputs.get("y")
        if source.width is None or source.height is None or width is None or height is None:
            return Expected(source.frames, fps=source.fps, frames_from=source.frames_from)
        if not isinstance(x, int) or not isinstance(y, int) or isinstance(x, bool) or isinstance(y, bool):
            return Expected(source.frames, fps=source.fps, frames_from=source.frames_from)
        x, y = min(max(x, 0), source.width - 1), min(max(y, 0), source.height - 1)
        return Expected(
            source.frames,
            min(width, source.width - x),
            min(height, source.height - y),
            source.fps,
            source.frames_from,
        )

    def _batch(self, inputs: Mapping[str, Any], depth: int) -> Expected:
        first, second = self._from(inputs, "image1", depth), self._from(inputs, "image2", depth)
        frames = first.frames + second.frames if first.frames and second.frames else None
        return Expected(frames, first.width, first.height)  # ComfyUI scales image2 to image1's size
