"""Output files listed in a history entry: safe local names, download through /view, decode checks."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError, ComfyHTTPError
from pytest_gemdirect.deadline import Deadline

OUTPUT_KEYS = ("images", "gifs", "videos")
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"|?*\\/]')
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")


class OutputsMissing(ComfyError):
    """Files the history lists that /view does not serve; the message names all of them."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        super().__init__(
            f"{len(missing)} output file(s) listed in /history are missing from /view (404): {shown}"
        )


class UndecodableOutput(ComfyError):
    """A retrieved image that does not decode."""


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    filename: str
    subfolder: str
    type: str
    animated: bool = False

    def where(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename


@dataclass(frozen=True)
class DownloadedFile:
    path: str
    node_id: str
    source: str  # subfolder/filename on the server
    sha256: str
    size: int
    frames: int  # images in the file (animated files hold several)
    width: int | None
    height: int | None
    flat: bool  # one flat colour: the commonest silent failure of a video graph

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_outputs(history_entry: dict[str, Any]) -> list[OutputFile]:
    """Every output file of a history entry (SaveImage, animated and video saves, custom-node keys)."""
    found: list[OutputFile] = []
    for node_id, output in (history_entry.get("outputs") or {}).items():
        animated_flags = output.get("animated") or []
        for key in OUTPUT_KEYS:
            for index, item in enumerate(output.get(key) or []):
                if not isinstance(item, dict) or "filename" not in item:
                    continue
                animated = bool(animated_flags[index]) if index < len(animated_flags) else key != "images"
                found.append(
                    OutputFile(
                        node_id=str(node_id),
                        filename=str(item["filename"]),
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                        animated=animated,
                    )
                )
    return found


def safe_name(name: str) -> str:
    """One path component from an untrusted server name: no separators, ``..``, drives or device names."""
    cleaned = _BAD_CHARS.sub("_", name).strip(" .")
    if not cleaned or cleaned in (".", ".."):
        cleaned = "unnamed"
    if _WINDOWS_RESERVED.match(cleaned):
        cleaned = "_" + cleaned
    return cleaned[:180]


def safe_output_path(dest_dir: Path, subfolder: str, filename: str) -> Path:
    """A path for a server-named file that always lies inside ``dest_dir``."""
    parts = [p for p in re.split(r"[\\/]+", subfolder or "") if p not in ("", ".", "..")]
    parts = [safe_name(p) for p in parts if not re.match(r"^[A-Za-z]:$", p)]
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    target = Path(dest_dir).joinpath(*parts, safe_name(base))
    root = Path(dest_dir).resolve()
    if root != target.resolve() and root not in target.resolve().parents:
        raise ComfyError(f"refusing output name {subfolder!r}/{filename!r}: it would leave {dest_dir}")
    return target


def _inspect(data: bytes, name: str) -> tuple[int, int | None, int | None, bool]:
    """Frames, size and flatness of an image file; raises UndecodableOutput."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            image.seek(frames - 1)
            image.load()
            image.seek(0)
            thumb = image.convert("RGB")
            thumb.thumbnail((64, 64))
            flat = all(low == high for low, high in thumb.getextrema())
            return frames, image.width, image.height, flat
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as exc:
        raise UndecodableOutput(f"{name} does not decode as an image: {exc}") from None


def download_outputs(
    client: ComfyClient, outputs: list[OutputFile], dest_dir: Path, *, deadline: Deadline
) -> list[DownloadedFile]:
    """Fetch every output through /view into ``dest_dir``, check each decodes, record sha256.

    All missing files are collected and named together, not just the first one.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    files: list[DownloadedFile] = []
    missing: list[str] = []
    used: set[Path] = set()
    for output in outputs:
        try:
            data = client.view(output.filename, output.subfolder, output.type, deadline=deadline)
        except ComfyHTTPError as exc:
            if exc.status == 404:
                missing.append(output.where())
                continue
            raise
        path = safe_output_path(dest_dir, "", output.filename)
        if path in used:
            path = safe_output_path(dest_dir, "", f"{output.node_id}-{output.filename}")
        used.add(path)
        path.write_bytes(data)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            frames, width, height, flat = 1, None, None, False  # no video decoder here: counted as one file
        else:
            frames, width, height, flat = _inspect(data, output.where())
        files.append(
            DownloadedFile(
                path=str(path),
                node_id=output.node_id,
                source=output.where(),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                frames=frames,
                width=width,
                height=height,
                flat=flat,
            )
        )
    if missing:
        raise OutputsMissing(missing)
    return files
