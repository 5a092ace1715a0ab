"""The video nodes of ComfyUI 0.3.64 (comfy_extras/nodes_video.py): CreateVideo, SaveVideo, SaveWEBM.

The files are real encodes (PyAV, which ships FFmpeg): SaveVideo writes MP4/H.264 and SaveWEBM
WebM/VP9 (or AV1), with the prompt in the container metadata, and both list the one file under
``images`` with ``animated: [true]`` as the c3 trace shows. Frames are encoded as they are drawn.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from pytest_gemdirect.sim.comfyui.errors import NodeFailure
from pytest_gemdirect.sim.comfyui.nodes import frames_of, output_frames
from pytest_gemdirect.sim.comfyui.registry import NodeRun as Run
from pytest_gemdirect.sim.comfyui.registry import register_node
from pytest_gemdirect.sim.comfyui.values import Frames, Token

WEBM_CODECS = {"vp9": "libvpx-vp9", "av1": "libsvtav1"}


@register_node("CreateVideo")
async def _create_video(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = frames_of(inp["images"])
    video = Token("VIDEO", "comfy_api.input_impl.VideoFromComponents", frames=frames, fps=float(inp["fps"]))
    return (video,), None


def _metadata(run: Run) -> dict[str, str]:
    """What ComfyUI writes into the container: the prompt and each extra_pnginfo entry, as JSON."""
    tags = {"prompt": json.dumps(run.prompt)}
    extra = run.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        tags.update({str(key): json.dumps(value) for key, value in extra.items()})
    return tags


def encode_video(
    path: Path,
    frames: Frames,
    fps: float,
    codec: str,
    *,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> None:
    """Encode ``frames`` one at a time into ``path`` (the container follows the file suffix)."""
    import av  # here, not at import: the simulator starts without loading FFmpeg

    width, height = frames.size
    with av.open(str(path), mode="w", options=container_options or {}) as output:
        for key, value in (metadata or {}).items():
            output.metadata[key] = value
        stream = output.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = options
        for index in range(len(frames)):
            picture = frames[index].convert("RGB")
            frame = av.VideoFrame.from_image(picture).reformat(format=pix_fmt)  # type: ignore[no-untyped-call]
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))


def _output_file(run: Run, prefix: str, size: tuple[int, int], ext: str) -> tuple[Path, dict[str, str]]:
    state = run.state
    with state.save_lock:
        folder, filename, counter, subfolder = state.get_save_image_path(
            prefix, str(state.output_dir), size[0], size[1]
        )
        name = f"{filename}_{counter:05}_.{ext}"
        state.reserve_counter(folder, filename, counter + 1)
    return Path(folder) / name, {"filename": name, "subfolder": subfolder, "type": "output"}


async def _encode(run: Run, path: Path, frames: Frames, fps: float, codec: str, **kw: Any) -> None:
    if run.fault("view-404"):
        return
    try:
        await run.state.offload(lambda: encode_video(path, frames, fps, codec, **kw))
    except Exception as exc:  # noqa: BLE001 - an encoder error is the node's error, as in ComfyUI
        raise NodeFailure(str(exc), f"{type(exc).__module__}.{type(exc).__qualname__}") from None


@register_node("SaveVideo")
async def _save_video(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    video = inp["video"]
    if not isinstance(video, Token) or not isinstance(video.info.get("frames"), Frames):
        raise NodeFailure(f"expected VIDEO, got {video}", "TypeError")
    frames = output_frames(run, video.info["frames"])
    path, result = await run.state.offload(_output_file, run, str(inp["filename_prefix"]), frames.size, "mp4")
    await _encode(
        run,
        path,
        frames,
        float(video.info.get("fps", 30.0)),
        "h264",
        metadata=_metadata(run),
        container_options={"movflags": "use_metadata_tags"},
    )
    return (), {"images": [result], "animated": [True]}


@register_node("SaveWEBM")
async def _save_webm(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = output_frames(run, inp["images"])
    codec = str(inp["codec"])
    path, result = await run.state.offload(
        _output_file, run, str(inp["filename_prefix"]), frames.size, "webm"
    )
    options = {"crf": str(inp["crf"])}
    if codec == "av1":
        options["preset"] = "6"
    await _encode(
        run,
        path,
        frames,
        float(inp["fps"]),
        WEBM_CODECS.get(codec, codec),
        pix_fmt="yuv420p10le" if codec == "av1" else "yuv420p",
        options=options,
        metadata=_metadata(run),
    )
    return (), {"images": [result], "animated": [True]}
