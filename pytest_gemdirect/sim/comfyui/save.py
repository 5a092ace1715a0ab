"""The simulated output nodes: SaveImage, PreviewImage, animated WEBP/PNG, SaveImageWebsocket.

File names, counters and the history ``ui`` dicts follow ComfyUI 0.3.64 (see the c1/c2 traces).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import string
import struct
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from pytest_gemdirect.sim.comfyui.constants import HOSTILE_NAMES, PNG_COMPRESS_LEVEL
from pytest_gemdirect.sim.comfyui.nodes import output_frames
from pytest_gemdirect.sim.comfyui.registry import NodeRun as Run
from pytest_gemdirect.sim.comfyui.registry import register_node
from pytest_gemdirect.sim.comfyui.values import Frames

SAVE_WINDOW = 3  # frames encoded at once: the I/O pool has 4 threads and this save runs in one


def png_info(run: Run) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(run.prompt))
    extra = run.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        for key, value in extra.items():
            info.add_text(str(key), json.dumps(value))
    return info


def encode_png(image: Image.Image, pnginfo: PngImagePlugin.PngInfo, level: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=pnginfo, compress_level=level)
    return buf.getvalue()


def _save_frames(
    run: Run, frames: Frames, prefix: str, folder_type: str, level: int, write: bool
) -> list[dict[str, str]]:
    state = run.state
    base = str(state.output_dir if folder_type == "output" else state.temp_dir)
    width, height = frames.size
    with state.save_lock:
        folder, filename, counter, subfolder = state.get_save_image_path(prefix, base, width, height)
        names = []
        for batch_number in range(len(frames)):
            stem = filename.replace("%batch_num%", str(batch_number))
            names.append(f"{stem}_{counter + batch_number:05}_.png")
        state.reserve_counter(folder, filename, counter + len(frames))
    if write:
        _write_pngs(run, frames, [os.path.join(folder, name) for name in names], level)
    if run.fault("names-hostile"):
        names = _hostile(run, names, folder, subfolder, folder_type)
    return [{"filename": name, "subfolder": subfolder, "type": folder_type} for name in names]


def _hostile(run: Run, names: list[str], folder: str, subfolder: str, folder_type: str) -> list[str]:
    """names-hostile: the first frames are listed under hostile names that /view maps to the files."""
    listed = list(names)
    for index, hostile in enumerate(HOSTILE_NAMES[: len(names)]):
        run.state.view_aliases[(folder_type, subfolder, hostile)] = Path(folder) / names[index]
        listed[index] = hostile
    return listed


def _write_png(frames: Frames, index: int, path: str, pnginfo: PngImagePlugin.PngInfo, level: int) -> None:
    data = encode_png(frames[index], pnginfo, level)
    with open(path, "wb") as fh:
        fh.write(data)


def _write_pngs(run: Run, frames: Frames, paths: list[str], level: int) -> None:
    """Draw, encode and write each frame as it comes, a few at a time: memory stays a few frames."""
    pnginfo = png_info(run)
    pool = run.state.pool
    written: dict[Hashable, str] = {}  # a picture already written -> its file
    copies: list[tuple[str, str]] = []
    in_flight: deque[Future[None]] = deque()
    for index, path in enumerate(paths):
        key = frames.key(index)
        if key in written:
            copies.append((written[key], path))
            continue
        written[key] = path
        if pool is None:  # shutting down: encode here
            _write_png(frames, index, path, pnginfo, level)
            continue
        while len(in_flight) >= SAVE_WINDOW:
            in_flight.popleft().result()
        in_flight.append(pool.submit(_write_png, frames, index, path, pnginfo, level))
    for future in in_flight:
        future.result()
    for source, target in copies:
        shutil.copyfile(source, target)


@register_node("SaveImage")
async def _save_image(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = output_frames(run, inp["images"])
    prefix = str(inp.get("filename_prefix", "ComfyUI"))
    write = not run.fault("view-404")
    results = await run.state.offload(_save_frames, run, frames, prefix, "output", PNG_COMPRESS_LEVEL, write)
    return (), {"images": results}


@register_node("PreviewImage")
async def _preview_image(
    run: Run, node_id: str, inp: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = output_frames(run, inp["images"])
    prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    write = not run.fault("view-404")
    results = await run.state.offload(_save_frames, run, frames, prefix, "temp", 1, write)
    return (), {"images": results}


@register_node("MaskPreview")
async def _mask_preview(
    run: Run, node_id: str, inp: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    mask = inp["mask"]
    if isinstance(mask, Frames):
        mask = mask.map(lambda f: f.convert("RGB"), mask.size)
    return await _preview_image(run, node_id, {"images": mask})


def _save_animated(
    run: Run, frames: Frames, prefix: str, ext: str, opts: dict[str, Any], write: bool
) -> list[dict[str, str]]:
    state = run.state
    width, height = frames.size
    with state.save_lock:
        folder, filename, counter, subfolder = state.get_save_image_path(
            prefix, str(state.output_dir), width, height
        )
        name = f"{filename}_{counter:05}_.{ext}"
        state.reserve_counter(folder, filename, counter + 1)
    if write:
        fmt = "WEBP" if ext == "webp" else "PNG"
        first, rest = frames[0], (frames[i] for i in range(1, len(frames)))
        first.save(os.path.join(folder, name), fmt, save_all=True, append_images=rest, **opts)
    return [{"filename": name, "subfolder": subfolder, "type": "output"}]


@register_node("SaveAnimatedWEBP")
async def _save_webp(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = output_frames(run, inp["images"])
    fps = float(inp.get("fps", 6.0))
    opts = {
        "duration": int(1000.0 / fps),
        "lossless": bool(inp.get("lossless", False)),
        "quality": int(inp.get("quality", 80)),
        "method": 0,  # fastest: the simulator must stay quick
        "loop": 0,
    }
    write = not run.fault("view-404")
    results = await run.state.offload(
        _save_animated, run, frames, str(inp["filename_prefix"]), "webp", opts, write
    )
    return (), {"images": results, "animated": [len(frames) != 1]}


@register_node("SaveAnimatedPNG")
async def _save_apng(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = output_frames(run, inp["images"])
    fps = float(inp.get("fps", 6.0))
    opts = {
        "duration": int(1000.0 / fps),
        "compress_level": min(int(inp.get("compress_level", 4)), 4),
        "loop": 0,
        "pnginfo": png_info(run),
    }
    write = not run.fault("view-404")
    results = await run.state.offload(
        _save_animated, run, frames, str(inp["filename_prefix"]), "png", opts, write
    )
    return (), {"images": results, "animated": [len(frames) != 1]}


def _frame_png(frames: Frames, index: int) -> bytes:
    return encode_png(frames[index], PngImagePlugin.PngInfo(), 1)


@register_node("SaveImageWebsocket")
async def _save_ws(run: Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = output_frames(run, inp["images"])
    state = run.state
    total = len(frames)
    conn_flags: dict[str, Any] = {}
    for conn in state.conns:
        if conn.sid == run.client_id and state.sockets.get(conn.sid) is conn.ws:
            conn_flags = conn.flags
    metadata = bool(conn_flags.get("supports_preview_metadata"))
    for step in range(total):
        run.check_interrupt()
        png = await state.offload(_frame_png, frames, step)
        entry = run.progress_nodes.setdefault(node_id, run.progress_entry(node_id, 0, 1, "running"))
        entry.update(value=step, max=total, state="running")
        await run.send_progress_state()
        progress = {"value": step, "max": total, "prompt_id": run.prompt_id, "node": node_id}
        if metadata:
            meta = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": run.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/png",
                }
            ).encode()
            await state.send_bytes(struct.pack(">II", 4, len(meta)) + meta + png, run.client_id)
            await state.send("progress", progress, run.client_id)
        else:
            await state.send("progress", progress, run.client_id)
            await state.send_bytes(struct.pack(">II", 1, 2) + png, run.client_id)
    return (), None
