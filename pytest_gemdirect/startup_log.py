"""Non-blocking problems in a ComfyUI start-up log, in a few short lines for the report.

ComfyUI starts even when custom nodes fail to import or optional packages are missing; the
problems scroll past in its console and are forgotten until a workflow needs the missing node.
``find_startup_warnings`` picks them out of the log the harness keeps (``comfyui.log`` in the run
directory) or of a log a user hands over.

What it recognises (patterns taken from real ComfyUI 0.3.x logs, plain console output as well as
the ``2025-02-23T14:17:10.154322 - ``, ``[2024-04-14 15:18] `` and
``2024-08-29 19:10:07,849 - root - WARNING - `` line prefixes of its log files):

- ``custom_node_import_failed``: ``Cannot import <path> module for custom nodes: <reason>``, the
  ``(IMPORT FAILED)`` / ``(PRESTARTUP FAILED)`` entries of the "Import times for custom nodes:" and
  "Prestartup times for custom nodes:" blocks (one finding per node, the reason merged in), and
  ``Skip <path> module for custom nodes due to the lack of NODE_CLASS_MAPPINGS``.
- ``builtin_node_import_failed``: ComfyUI's own ``comfy_extras/`` nodes that failed (the
  ``IMPORT FAILED: nodes_audio.py`` list after "WARNING: some comfy_extras/ nodes did not import
  correctly", or a ``Cannot import …\\comfy_extras\\nodes_x.py`` line).
- ``missing_package``: ``No module named 'X'`` anywhere, ``X is not installed``,
  ``X package is not installed``, ``torchaudio missing``, ``Onnxruntime not found`` and the like;
  one finding per top-level package, naming the custom node that needed it when the log says so.
- ``error``: the final line of a traceback that no import-failure line explains.
- ``warning``: other lines with an upper-case ``WARNING`` (``WARNING: You need pytorch with
  cu130…``, ``[Crystools WARNING] …``, ``2024-… - root - WARNING - …``) and Python warnings
  (``…\\dwpose.py:26: UserWarning: DWPose: Onnxruntime not found…``).

Findings are deduplicated, kept in log order (by the line of their first appearance, 1-based) and
each message is at most ``MAX_MESSAGE`` characters. Nothing here raises on odd input.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from pytest_gemdirect.processes import strip_ansi

MAX_MESSAGE = 200
MAX_FINDINGS = 60

KINDS = (
    "custom_node_import_failed",
    "builtin_node_import_failed",
    "missing_package",
    "error",
    "warning",
)


@dataclass(frozen=True)
class StartupWarning:
    """One non-blocking problem found in a ComfyUI start-up log."""

    kind: str  # one of KINDS
    message: str
    line_no: int  # 1-based line of its first appearance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Import names whose pip package has another name: said in the message, it saves a search.
PIP_NAMES = {
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "sklearn": "scikit-learn",
    "google.protobuf": "protobuf",
    "flash_attn": "flash-attn",
    "onnxruntime": "onnxruntime-gpu",
    "sageattention": "sageattention",
    "dotenv": "python-dotenv",
    "fitz": "PyMuPDF",
}

# Optional accelerators and helpers that ComfyUI and popular custom nodes announce in words
# ("sageattention package is not installed", "torchaudio missing, ACE model will be broken",
# "DWPose: Onnxruntime not found or doesn't come with acceleration providers").
KNOWN_OPTIONAL = (
    "sageattention",
    "onnxruntime",
    "xformers",
    "triton",
    "torchaudio",
    "flash_attn",
    "skimage",
    "pynvml",
    "insightface",
    "cv2",
)

# Modules that belong to ComfyUI itself: "No module named 'comfy.graph_utils'" means a custom node
# is out of date, not that a package is missing (the import failure is reported anyway).
_COMFY_OWN = frozenset(
    {
        "comfy",
        "comfy_extras",
        "comfy_api",
        "comfy_api_nodes",
        "comfy_execution",
        "comfy_config",
        "folder_paths",
        "nodes",
        "server",
        "execution",
        "latent_preview",
        "node_helpers",
        "app",
        "utils",
        "custom_nodes",
    }
)

_PREFIXES = (
    # 2024-08-29 19:10:07,849 - root - WARNING - message   (ComfyUI's older comfyui.log)
    re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+ - [\w.\-]+ - (?P<level>[A-Z]+) - ?"),
    # 2025-02-23T14:17:10.154322 - message                 (the user-directory log, /internal/logs)
    re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)? - ?"),
    # [2024-04-14 15:18] message                            (ComfyUI-Manager's comfyui.log)
    re.compile(r"^\[\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?\] ?"),
)

_CANNOT_IMPORT = re.compile(r"Cannot import (?P<path>.+?) module for custom nodes:\s*(?P<reason>.*)$")
_SKIP_NODE = re.compile(r"Skip (?P<path>.+?) module for custom nodes due to (?P<reason>.+?)\.?$")
_TIMES_HEADER = re.compile(r"^(?P<what>Import|Prestartup) times for custom nodes:\s*$")
_TIMES_ENTRY = re.compile(
    r"^\s*\d+(?:\.\d+)? seconds(?: \((?P<flag>IMPORT FAILED|PRESTARTUP FAILED)\))?:\s*(?P<path>.+?)\s*$"
)
_EXTRAS_FAILED = re.compile(r"^\s*IMPORT FAILED:\s*(?P<name>\S.*?)\s*$")
_EXTRAS_HEADER = re.compile(r"some comfy_extras/ nodes did not import correctly")
_NO_MODULE = re.compile(r"No module named '(?P<name>[^']+)'")
_NOT_INSTALLED = re.compile(
    r"(?<![\w.\-])(?P<name>[A-Za-z][\w.\-]*?)(?: package| module| library)? (?:is |was |are )?not installed",
    re.IGNORECASE,
)
_OPTIONAL_ABSENT = re.compile(
    r"(?<![\w\-])(?P<name>" + "|".join(KNOWN_OPTIONAL) + r")(?:[ _\-]gpu)?"
    r"(?: package| module| library)?(?: is| was)?"
    r" (?:missing|not found|not available|unavailable|could not be (?:loaded|imported))",
    re.IGNORECASE,
)
_COULD_NOT_LOAD = re.compile(
    r"(?:could not|couldn't|failed to) (?:load|import) (?P<name>" + "|".join(KNOWN_OPTIONAL) + r")\b",
    re.IGNORECASE,
)
_PY_WARNING = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<cat>[A-Z]\w*Warning): (?P<msg>.*)$")
_UPPER_WARNING = re.compile(r"\bWARNING\b")
_UPPER_ERROR = re.compile(r"\bERROR\b")
_STOPWORDS = frozenset({"it", "this", "that", "which", "is", "are", "package", "module", "library", "one"})
_TRACEBACK = "Traceback (most recent call last):"
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\w*): ?(?P<msg>.*)$")
_SERVER_STARTED = re.compile(r"^To see the GUI go to: ")


def _strip_prefix(line: str) -> tuple[str, str | None]:
    """The line without a log-file prefix, and the level that prefix named (if any)."""
    for pattern in _PREFIXES:
        match = pattern.match(line)
        if match:
            level = match.groupdict().get("level")
            return line[match.end() :], level
    return line, None


def _node_name(path: str) -> str:
    """``C:\\ComfyUI\\custom_nodes\\ComfyUI-Foo`` -> ``ComfyUI-Foo`` (either separator, any OS)."""
    path = path.strip().strip("'\"").rstrip("\\/")
    name = re.split(r"[\\/]", path)[-1] if path else path
    return name or path


def _is_builtin(path: str) -> bool:
    return bool(re.search(r"(^|[\\/])comfy_extras([\\/]|$)", path)) or bool(
        re.search(r"(^|[\\/])comfy_api_nodes([\\/]|$)", path)
    )


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _module_package(name: str) -> str | None:
    """The top-level package of an imported module name, or None when it is not one to install
    (ComfyUI's own modules, a custom node's folder name with a dash, a path)."""
    top = name.strip().split(".")[0]
    if not top or top in _COMFY_OWN or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", top):
        return None
    return top


def _named_package(name: str) -> str | None:
    """A package named in words ("modelscope not installed", "onnxruntime-gpu missing")."""
    name = name.strip().rstrip(".")
    if name.lower() in _STOPWORDS or name in _COMFY_OWN:
        return None
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", name):
        return None
    lowered = name.lower()
    for known in KNOWN_OPTIONAL:  # "Onnxruntime" and "onnxruntime-gpu" are onnxruntime
        if lowered == known or lowered.startswith((known + "-", known + "_gpu")):
            return known
    return name


def _missing_package(line: str) -> str | None:
    """The package a line says is missing, if it says so."""
    match = _NO_MODULE.search(line)
    if match:
        return _module_package(match.group("name"))
    for pattern in (_OPTIONAL_ABSENT, _COULD_NOT_LOAD, _NOT_INSTALLED):
        match = pattern.search(line)
        if match:
            pkg = _named_package(match.group("name"))
            if pkg:
                return pkg
    return None


def _package_words(pkg: str) -> str:
    pip = PIP_NAMES.get(pkg)
    return f"'{pkg}' (pip install {pip})" if pip and pip != pkg else f"'{pkg}'"


class _Findings:
    """Collected findings keyed for deduplication; later evidence can enrich an earlier one."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, kind: str, key: str, line_no: int, **data: Any) -> dict[str, Any]:
        item = self._items.get((kind, key.lower()))
        if item is None:
            item = {"kind": kind, "line_no": line_no, **data}
            self._items[(kind, key.lower())] = item
        else:
            for name, value in data.items():
                if value and not item.get(name):
                    item[name] = value
        return item

    def items(self) -> list[dict[str, Any]]:
        return sorted(self._items.values(), key=lambda item: item["line_no"])


def _message(item: dict[str, Any]) -> str:
    kind = item["kind"]
    if kind == "custom_node_import_failed":
        what = "prestartup script of custom node" if item.get("prestartup") else "custom node"
        verb = "failed" if item.get("prestartup") else "failed to import"
        if item.get("skipped"):
            return _short(f"custom node {item['name']} skipped: {item['reason']}")
        reason = item.get("reason")
        return _short(f"{what} {item['name']} {verb}" + (f": {reason}" if reason else ""))
    if kind == "builtin_node_import_failed":
        reason = item.get("reason")
        return _short(
            f"built-in ComfyUI node module {item['name']} failed to import"
            + (f": {reason}" if reason else " (missing dependencies?)")
        )
    if kind == "missing_package":
        pkg = item["name"]
        needed = item.get("needed_by")
        context = f" (needed by {needed})" if needed else ""
        note = item.get("note")
        if note and (_NO_MODULE.search(note) or _COULD_NOT_LOAD.search(note)):
            note = None  # it only says again that the module is missing
        tail = f": {note}" if note and not needed else ""
        return _short(f"package {_package_words(pkg)} is not installed{context}{tail}")
    return _short(item["text"])


class _LogScan:
    """One pass over a log's lines; the blocks it is inside (traceback, import times, comfy_extras)
    carry from one line to the next."""

    def __init__(self) -> None:
        self.found = _Findings()
        # (line_no, type, message) of traceback final lines; dropped at the end when an
        # import-failure line carries the same reason
        self.exceptions: list[tuple[int, str, str]] = []
        self.reasons: set[str] = set()
        self.in_times = ""
        self.in_extras = False
        self.in_traceback = False
        self.skip_next_indented = False

    def line(self, raw: str, line_no: int, *, until_server_start: bool) -> bool:
        """Read one line; False when the scan should stop there."""
        line, level = _strip_prefix(raw.rstrip())
        stripped = line.strip()
        if self._continuation(raw, stripped, line_no):
            return True
        if stripped == _TRACEBACK or stripped.endswith(" " + _TRACEBACK):
            self.in_traceback = True
            return True
        if _SERVER_STARTED.match(stripped) and until_server_start:
            return False
        if self._times_block(line, stripped, line_no) or self._extras_block(stripped, line_no):
            return True
        if not self._import_failure(stripped, line_no):
            self._other(stripped, level, line_no)
        return True

    def _continuation(self, raw: str, stripped: str, line_no: int) -> bool:
        """True for a line that only continues what came before (a warning's source line, a
        traceback's body); a traceback's final line is noted and read on as a line of its own."""
        if self.skip_next_indented:
            self.skip_next_indented = False
            if raw.startswith((" ", "\t")):
                return True  # the source line Python prints under a warning
        if self.in_traceback:
            if not stripped or raw.startswith((" ", "\t")):
                return True
            self.in_traceback = False
            exc = _EXC_LINE.match(stripped)
            if exc:
                # and read on: "ModuleNotFoundError: No module named 'x'" is also a finding
                self.exceptions.append((line_no, exc.group("type"), exc.group("msg")))
        return False

    def _times_block(self, line: str, stripped: str, line_no: int) -> bool:
        header = _TIMES_HEADER.match(stripped)
        if header:
            self.in_times = header.group("what")
            return True
        if not self.in_times:
            return False
        entry = _TIMES_ENTRY.match(line)
        if not entry:
            self.in_times = ""
            return False
        if entry.group("flag"):
            path = entry.group("path")
            prestartup = entry.group("flag") == "PRESTARTUP FAILED"
            kind = "builtin_node_import_failed" if _is_builtin(path) else "custom_node_import_failed"
            key = ("prestartup:" if prestartup else "") + _node_name(path)
            self.found.add(kind, key, line_no, name=_node_name(path), prestartup=prestartup)
        return True

    def _extras_block(self, stripped: str, line_no: int) -> bool:
        if _EXTRAS_HEADER.search(stripped):
            self.in_extras = True
            return True
        if not self.in_extras:
            return False
        extra = _EXTRAS_FAILED.match(stripped)
        if extra:
            name = _node_name(extra.group("name"))
            self.found.add("builtin_node_import_failed", name, line_no, name=name)
            return True
        if not stripped:
            return True
        self.in_extras = False  # "This issue might be caused by new missing dependencies…"
        return stripped.startswith(("This issue might be caused", "Please run the update script"))

    def _import_failure(self, stripped: str, line_no: int) -> bool:
        cannot = _CANNOT_IMPORT.search(stripped)
        if cannot:
            path, reason = cannot.group("path"), cannot.group("reason").strip()
            self.reasons.add(reason)
            name = _node_name(path)
            kind = "builtin_node_import_failed" if _is_builtin(path) else "custom_node_import_failed"
            self.found.add(kind, name, line_no, name=name, reason=reason)
            missing = _NO_MODULE.search(reason)
            pkg = _module_package(missing.group("name")) if missing else None
            if pkg:
                self.found.add("missing_package", pkg, line_no, name=pkg, needed_by=name)
            return True
        skip = _SKIP_NODE.search(stripped)
        if skip:
            name = _node_name(skip.group("path"))
            reason = skip.group("reason").strip()
            self.found.add(
                "custom_node_import_failed", "skip:" + name, line_no, name=name, skipped=True, reason=reason
            )
            return True
        return False

    def _other(self, stripped: str, level: str | None, line_no: int) -> None:
        pywarn = _PY_WARNING.match(stripped)
        if pywarn:
            self.skip_next_indented = True  # Python prints the warning's source line under it
        note = pywarn.group("msg") if pywarn else stripped
        pkg = _missing_package(stripped)
        if pkg:
            self.found.add("missing_package", pkg, line_no, name=pkg, note=note)
        elif pywarn:
            text_ = f"{pywarn.group('cat')}: {pywarn.group('msg')} ({_node_name(pywarn.group('file'))})"
            self.found.add("warning", f"{pywarn.group('cat')}:{pywarn.group('msg')}", line_no, text=text_)
        elif level in ("ERROR", "CRITICAL") or _UPPER_ERROR.search(stripped):
            self.found.add("error", stripped, line_no, text=stripped)
        elif level == "WARNING" or _UPPER_WARNING.search(stripped):
            self.found.add("warning", stripped, line_no, text=stripped)

    def findings(self) -> list[StartupWarning]:
        for line_no, exc_type, exc_msg in self.exceptions:
            if exc_msg.strip() in self.reasons or _NO_MODULE.search(exc_msg):
                continue
            text_ = f"{exc_type}: {exc_msg}" if exc_msg else exc_type
            self.found.add("error", text_, line_no, text=text_)
        return [StartupWarning(item["kind"], _message(item), item["line_no"]) for item in self.found.items()]


def find_startup_warnings(
    log_text: str, *, until_server_start: bool = False, max_findings: int = MAX_FINDINGS
) -> list[StartupWarning]:
    """Non-blocking problems in a ComfyUI start-up log (see the module docstring).

    ``until_server_start`` stops at the "To see the GUI go to: …" line, so warnings from jobs run
    later in the same log are left out. At most ``max_findings`` are returned; when there were
    more, the last one says how many were left out.
    """
    if not log_text:
        return []
    text = strip_ansi(log_text).replace("\r\n", "\n").replace("\r", "\n")
    scan = _LogScan()
    for index, raw in enumerate(text.split("\n")):
        if not scan.line(raw, index + 1, until_server_start=until_server_start):
            break
    result = scan.findings()
    if max_findings >= 1 and len(result) > max_findings:
        left = len(result) - (max_findings - 1)
        result = result[: max_findings - 1] + [
            StartupWarning(
                "warning", f"… and {left} more findings (see the log)", result[max_findings - 1].line_no
            )
        ]
    return result


def format_startup_warnings(warnings: list[StartupWarning]) -> str:
    """The findings as lines for a terminal or a text summary ("line 12: custom node … ")."""
    return "\n".join(f"line {w.line_no}: [{w.kind}] {w.message}" for w in warnings)
