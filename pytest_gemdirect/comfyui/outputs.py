"""Output files listed in a history entry: safe local names, download through /view, decode checks.

File names come from the server and are untrusted: :func:`safe_output_path` keeps every file
inside the destination folder on Windows and POSIX alike (no ``..``, no absolute or drive paths,
no backslashes or NUL, no reserved device names such as ``CON`` or ``aux.png``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pytest_gemdirect.comfyui.client import (
    ComfyClient,
    ComfyError,
    ComfyTimeout,
    OutputMissing,
    ServerGone,
    node_sort_key,
)
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.names import safe_file_name
from pytest_gemdirect.rundir import atomic_write_bytes
from pytest_gemdirect.text import visible

# SaveImage/PreviewImage and the animated/video saves use "images" (with "animated": [true]);
# some custom nodes (VideoHelperSuite) use "gifs" or "videos".
OUTPUT_KEYS = ("images", "gifs", "videos")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".apng")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeOutputName(ComfyError, ValueError):
    """A server-given name that cannot be made into a path inside the destination folder."""


class UndecodableOutput(ComfyError):
    """A retrieved image that does not decode with Pillow."""


class OutputDownloadError(ComfyError):
    """Some output files could not be fetched or checked; the message names every one of them.

    ``missing`` (404 from /view), ``undecodable`` and ``failed`` hold ``subfolder/filename``
    names (the last two with the reason); ``downloaded`` the files that did arrive (they are
    kept on disk); ``server_gone`` is true when the server went away part-way.
    """

    kind = "download"

    def __init__(
        self,
        message: str,
        *,
        missing: list[str],
        undecodable: list[tuple[str, str]],
        failed: list[tuple[str, str]],
        downloaded: list[DownloadedFile],
        server_gone: bool = False,
    ) -> None:
        super().__init__(message, kind="missing" if missing and not (undecodable or failed) else "download")
        self.missing = missing
        self.undecodable = undecodable
        self.failed = failed
        self.downloaded = downloaded
        self.server_gone = server_gone


OutputsMissing = OutputDownloadError  # the earlier name


@dataclass(frozen=True)
class OutputFile:
    """One file a node wrote, as /history lists it."""

    node_id: str
    filename: str
    subfolder: str
    type: str = "output"
    animated: bool = False

    def where(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: OutputFile | Mapping[str, Any]) -> OutputFile:
        """An OutputFile from itself or from its dict form (``JobResult.outputs``)."""
        if isinstance(value, OutputFile):
            return value
        return cls(
            node_id=str(value.get("node_id", "")),
            filename=str(value["filename"]),
            subfolder=str(value.get("subfolder") or ""),
            type=str(value.get("type") or "output"),
            animated=bool(value.get("animated", False)),
        )


@dataclass(frozen=True)
class DownloadedFile:
    """One output file on local disk: where it came from, its hash and what Pillow saw in it."""

    path: str
    node_id: str
    source: str  # subfolder/filename on the server
    sha256: str
    size: int
    frames: int  # images in the file (an animated file holds several; 1 for a file Pillow cannot read)
    width: int | None
    height: int | None
    flat: bool  # a single flat colour: the commonest silent failure of a video graph
    filename: str = ""
    subfolder: str = ""
    type: str = "output"
    animated: bool = False
    format: str | None = None  # Pillow's format name; None when not an image Pillow reads
    decoded: bool = True
    """Every frame decoded: at download, or by the frames stage's scan for the files it read (video
    files, and images checked at download by their headers alone, until then)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_outputs(history_entry: Mapping[str, Any] | None, *, include_temp: bool = False) -> list[OutputFile]:
    """Every output file of a history entry, nodes in natural id order, files in server order.

    SaveImage lists ``images``; SaveAnimatedWEBP/PNG, SaveWEBM and SaveVideo list their one file
    under ``images`` with ``animated: [true]``; ``gifs``/``videos`` (custom nodes) count as
    animated. Files of ``type: temp`` (PreviewImage) are left out unless ``include_temp``.
    """
    outputs = (history_entry or {}).get("outputs") or {}
    if not isinstance(outputs, Mapping):
        return []
    found: list[OutputFile] = []
    for node_id in sorted(outputs, key=node_sort_key):
        output = outputs[node_id]
        if not isinstance(output, Mapping):
            continue
        flags = output.get("animated")
        flags = list(flags) if isinstance(flags, list | tuple) else []
        for key in OUTPUT_KEYS:
            items = output.get(key)
            if not isinstance(items, list):
                continue
            for index, item in enumerate(items):
                if not isinstance(item, Mapping) or not item.get("filename"):
                    continue
                kind = str(item.get("type") or "output")
                if kind == "temp" and not include_temp:
                    continue
                if key == "images":
                    animated = bool(flags[index]) if index < len(flags) else bool(flags and flags[-1])
                else:
                    animated = True
                found.append(
                    OutputFile(
                        node_id=str(node_id),
                        filename=str(item["filename"]),
                        subfolder=str(item.get("subfolder") or ""),
                        type=kind,
                        animated=animated,
                    )
                )
    return found


def safe_output_path(dest_dir: Path | str, subfolder: str, filename: str) -> Path:
    """Where a server-named file goes: always inside ``dest_dir``.

    ``subfolder`` is split on ``/`` and ``\\``; empty, ``.`` and ``..`` parts and a drive
    (``C:``) are dropped, the rest made safe. Of ``filename`` only the last component is kept
    (``../../x.png`` becomes ``x.png``); a name with nothing usable left is refused.
    """
    if "\x00" in str(filename) or "\x00" in str(subfolder or ""):
        raise UnsafeOutputName(f"refusing output name {subfolder!r}/{filename!r}: it contains NUL")
    root = Path(dest_dir)
    parts = []
    for index, part in enumerate(re.split(r"[\\/]+", str(subfolder or ""))):
        if index == 0 and _DRIVE.match(part):
            part = part[2:]
        if part in ("", ".", ".."):
            continue
        parts.append(safe_file_name(part))
    base = re.split(r"[\\/]+", str(filename))[-1]
    if _DRIVE.match(base):
        base = base[2:]
    if base.strip(" .") in ("", ".."):
        raise UnsafeOutputName(f"refusing output name {subfolder!r}/{filename!r}: no file name is left")
    target = root.joinpath(*parts, safe_file_name(base))
    resolved_root = root.resolve()
    resolved = target.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UnsafeOutputName(f"refusing output name {subfolder!r}/{filename!r}: it would leave {root}")
    if resolved == resolved_root:
        raise UnsafeOutputName(f"refusing output name {subfolder!r}/{filename!r}: it names {root} itself")
    return target


def _inspect(data: bytes, name: str, *, pixels: bool) -> tuple[int, int | None, int | None, bool, str | None]:
    """(frames, width, height, flat, format) of an image file; or UndecodableOutput.

    With ``pixels`` every frame is decoded (a keyframe: is it one flat colour?). Without, only the
    headers are read and, for a PNG, every chunk's checksum to the end (a cut-short or damaged file
    is still found here): the frames stage's scan decodes each frame once, for the checks, the
    clip and the previews together, so decoding here too would double the scene's work."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = int(getattr(image, "n_frames", 1) or 1)
            fmt = image.format
            width, height = image.width, image.height
            if not pixels:
                if fmt == "PNG" and frames == 1:
                    image.verify()
                return frames, width, height, False, fmt
            first = None
            for index in range(frames):
                image.seek(index)
                image.load()
                if first is None:
                    first = image.convert("RGB")
            assert first is not None
            first.thumbnail((64, 64))
            flat = all(low == high for low, high in first.getextrema())
            return frames, width, height, flat, fmt
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as exc:
        raise UndecodableOutput(f"{name} does not decode as an image: {exc}") from None


def _names(items: Iterable[str]) -> str:
    return ", ".join(items)


def _local_path(dest: Path, output: OutputFile, index: int, used: set[str]) -> Path:
    """A flat, safe, not yet used path in ``dest`` for one output (raises UnsafeOutputName)."""
    path = safe_output_path(dest, "", output.filename)
    key = os.path.normcase(str(path))
    if key in used:  # the same name from two subfolders or nodes: keep both
        path = safe_output_path(dest, "", f"node{output.node_id}-{index}-{path.name}")
        key = os.path.normcase(str(path))
    used.add(key)
    return path


def _checked_file(path: Path, data: bytes, output: OutputFile, *, pixels: bool) -> DownloadedFile:
    """Save ``data`` at ``path`` and describe it; raises UndecodableOutput for a broken image
    (``decoded`` says whether its pixels were read here, see ``_inspect``)."""
    where = output.where()
    atomic_write_bytes(path, data)
    suffix = path.suffix.lower()
    decoded, fmt = True, None
    if suffix in VIDEO_SUFFIXES:
        # one file here; the frames stage's video checks decode it and count its frames
        frames, width, height, flat = 1, None, None, False
        decoded = False
    else:
        try:
            frames, width, height, flat, fmt = _inspect(data, where, pixels=pixels)
            decoded = pixels
        except UndecodableOutput:
            if suffix in IMAGE_SUFFIXES:
                raise
            frames, width, height, flat, decoded = 1, None, None, False, False  # not an image format
    return DownloadedFile(
        path=str(path),
        node_id=output.node_id,
        source=where,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        frames=frames,
        width=width,
        height=height,
        flat=flat,
        filename=output.filename,
        subfolder=output.subfolder,
        type=output.type,
        animated=output.animated or frames > 1,
        format=fmt,
        decoded=decoded,
    )


@dataclass
class _Problems:
    """What went wrong while downloading, gathered so that the error names every file."""

    missing: list[str] = field(default_factory=list)
    undecodable: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None
    not_fetched: list[str] = field(default_factory=list)
    server_gone: bool = False

    def any(self) -> bool:
        return bool(self.missing or self.undecodable or self.failed or self.stopped)

    def error(self, total: int, files: list[DownloadedFile], server: str, dest: Path) -> OutputDownloadError:
        clauses = []
        if self.missing:
            missing = _names(self.missing)
            clauses.append(
                f"{len(self.missing)} listed in /history but missing from /view (HTTP 404): {missing}"
            )
        if self.undecodable:
            clauses.append(
                f"{len(self.undecodable)} do not decode as images: "
                + _names(f"{name} ({why})" for name, why in self.undecodable)
            )
        if self.failed:
            clauses.append(
                f"{len(self.failed)} could not be fetched: "
                + _names(f"{n} ({why})" for n, why in self.failed)
            )
        if self.stopped:
            clauses.append(
                f"stopped: {self.stopped}; {len(self.not_fetched)} not fetched: {_names(self.not_fetched)}"
            )
        bad = len(self.missing) + len(self.undecodable) + len(self.failed) + len(self.not_fetched)
        # the names in it come from the server: a NUL or an ESC in one must not reach a terminal
        message = visible(
            f"{bad} of {total} output files could not be retrieved through /view from {server}: "
            + "; ".join(clauses)
            + f"; {len(files)} saved in {dest}"
        )
        return OutputDownloadError(
            message,
            missing=self.missing,
            undecodable=self.undecodable,
            failed=self.failed,
            downloaded=files,
            server_gone=self.server_gone,
        )


def download_outputs(
    client: ComfyClient,
    outputs: Iterable[OutputFile | Mapping[str, Any]],
    dest_dir: Path | str,
    *,
    deadline: Deadline | None,
    already: Iterable[DownloadedFile] = (),
    pixels: bool = True,
) -> list[DownloadedFile]:
    """Fetch every output through /view into ``dest_dir`` (flat), check each decodes, record sha256.

    ``pixels=False``: images are checked by their headers and checksums only (``_inspect``), for a
    caller that decodes every frame itself right after.

    Every problem is collected and the error names all the files concerned, not just the
    first; files that did arrive stay on disk and are listed in the error's ``downloaded``.
    A server that goes away or a spent deadline stops the loop; the files not fetched are named.
    ``already``: files an earlier call saved (its error's ``downloaded``): kept, not fetched again.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [OutputFile.coerce(o) for o in outputs]
    have = {(f.node_id, f.source): f for f in already}
    files: list[DownloadedFile] = []
    problems = _Problems()
    used: set[str] = set()
    for index, output in enumerate(wanted):
        where = output.where()
        try:
            path = _local_path(dest, output, index, used)
        except UnsafeOutputName as exc:
            problems.failed.append((where, str(exc)))
            continue
        saved = have.get((output.node_id, where))
        if saved is not None and Path(saved.path) == path:
            files.append(saved)
            continue
        try:
            data = client.view(output.filename, output.subfolder, output.type, deadline=deadline)
        except OutputMissing:
            problems.missing.append(where)
            continue
        except (ServerGone, ComfyTimeout) as exc:
            problems.server_gone = isinstance(exc, ServerGone)
            problems.stopped = str(exc)
            rest = [(o.node_id, o.where()) for o in wanted[index:]]
            problems.not_fetched = [key[1] for key in rest if key not in have]
            files += [have[key] for key in rest if key in have]  # saved by an earlier call: kept
            break
        except ComfyError as exc:
            problems.failed.append((where, str(exc)))
            continue
        try:
            files.append(_checked_file(path, data, output, pixels=pixels))
        except UndecodableOutput as exc:
            problems.undecodable.append((where, str(exc).split(": ", 1)[-1]))
    if not problems.any():
        return files
    raise problems.error(len(wanted), files, client.base_url, dest)


__all__ = [
    "DownloadedFile",
    "IMAGE_SUFFIXES",
    "OUTPUT_KEYS",
    "OutputDownloadError",
    "OutputFile",
    "OutputsMissing",
    "UndecodableOutput",
    "UnsafeOutputName",
    "VIDEO_SUFFIXES",
    "download_outputs",
    "list_outputs",
    "safe_output_path",
]
