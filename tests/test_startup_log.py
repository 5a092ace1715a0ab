"""Warnings picked out of ComfyUI start-up logs shaped like real 0.3.x ones (Windows portable build)."""

# ruff: noqa: E501  (the log lines below are as long as ComfyUI prints them)

from __future__ import annotations

import pytest

from pytest_gemdirect.startup_log import (
    KINDS,
    MAX_MESSAGE,
    StartupWarning,
    find_startup_warnings,
    format_startup_warnings,
)

# A Windows portable start-up (python_embeded\python.exe -s ComfyUI\main.py ...) with the problems
# users actually meet: a custom node missing a package, an optional accelerator not installed,
# a built-in comfy_extras module that failed, a Python warning and a third-party WARNING line.
PORTABLE_LOG = r"""
C:\ComfyUI_windows_portable>.\python_embeded\python.exe -s ComfyUI\main.py --listen 127.0.0.1 --port 8188
Checkpoint files will always be loaded safely.
Total VRAM 24576 MB, total RAM 65277 MB
pytorch version: 2.8.0+cu128
Set vram state to: NORMAL_VRAM
Device: cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync
Using pytorch attention
Warning: Could not load sageattention: No module named 'sageattention'
sageattention package is not installed, sageattention will not be available
Python version: 3.12.10 (tags/v3.12.10:0cc8128, Apr  8 2025, 12:21:36) [MSC v.1943 64 bit (AMD64)]
ComfyUI version: 0.3.64
ComfyUI frontend version: 1.27.10
[Prompt Server] web root: C:\ComfyUI_windows_portable\python_embeded\Lib\site-packages\comfyui_frontend_package\static
Traceback (most recent call last):
  File "C:\ComfyUI_windows_portable\ComfyUI\nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "<frozen importlib._bootstrap_external>", line 999, in exec_module
  File "<frozen importlib._bootstrap>", line 488, in _call_with_frames_removed
  File "C:\ComfyUI_windows_portable\ComfyUI\comfy_extras\nodes_audio.py", line 4, in <module>
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import C:\ComfyUI_windows_portable\ComfyUI\comfy_extras\nodes_audio.py module for custom nodes: No module named 'torchaudio'
Traceback (most recent call last):
  File "C:\ComfyUI_windows_portable\ComfyUI\nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "<frozen importlib._bootstrap_external>", line 999, in exec_module
  File "<frozen importlib._bootstrap>", line 488, in _call_with_frames_removed
  File "C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Foo\__init__.py", line 1, in <module>
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
  File "C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Foo\nodes.py", line 11, in <module>
    from skimage import util as sk_util
ModuleNotFoundError: No module named 'skimage'

Cannot import C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Foo module for custom nodes: No module named 'skimage'
### Loading: ComfyUI-Manager (V3.37.1)
[ComfyUI-Manager] network_mode: public
C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\comfyui_controlnet_aux\node_wrappers\dwpose.py:26: UserWarning: DWPose: Onnxruntime not found or doesn't come with acceleration providers, switch to OpenCV with CPU device. DWPose might run very slowly
  warnings.warn("DWPose: Onnxruntime not found or doesn't come with acceleration providers, switch to OpenCV with CPU device. DWPose might run very slowly")
[Crystools WARNING] No GPU monitoring libraries available.
Traceback (most recent call last):
  File "C:\ComfyUI_windows_portable\ComfyUI\nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Broken\__init__.py", line 7, in <module>
    from comfy.graph_utils import GraphBuilder
ModuleNotFoundError: No module named 'comfy.graph_utils'

Cannot import C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Broken module for custom nodes: No module named 'comfy.graph_utils'
Skip C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\example_folder module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.

Import times for custom nodes:
   0.0 seconds: C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\websocket_image_save.py
   0.0 seconds (IMPORT FAILED): C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Foo
   0.0 seconds (IMPORT FAILED): C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Broken
   0.0 seconds (IMPORT FAILED): C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-NoReason
   0.1 seconds: C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\comfyui_controlnet_aux
   0.4 seconds: C:\ComfyUI_windows_portable\ComfyUI\custom_nodes\ComfyUI-Manager

WARNING: some comfy_extras/ nodes did not import correctly. This may be because they are missing some dependencies.

IMPORT FAILED: nodes_audio.py
IMPORT FAILED: nodes_audio_encoder.py

This issue might be caused by new missing dependencies added the last time you updated ComfyUI.
Please run the update script: update/update_comfyui.bat

Context impl SQLiteImpl.
Will assume non-transactional DDL.
Starting server

To see the GUI go to: http://127.0.0.1:8188
[DEPRECATION WARNING] Detected import of deprecated legacy API: /scripts/ui.js. This is likely caused by a custom node extension using outdated APIs.
got prompt
Prompt executed in 0.52 seconds
"""

CLEAN_LOG = """Checkpoint files will always be loaded safely.
Total VRAM 24576 MB, total RAM 65277 MB
pytorch version: 2.8.0+cu128
Set vram state to: NORMAL_VRAM
Device: cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync
Using pytorch attention
Python version: 3.11.9 (main, Apr  2 2024, 10:12:12) [MSC v.1938 64 bit (AMD64)]
ComfyUI version: 0.3.64
ComfyUI frontend version: 1.27.10
[Prompt Server] web root: C:\\ComfyUI\\web

Import times for custom nodes:
   0.0 seconds: C:\\ComfyUI\\custom_nodes\\websocket_image_save.py

Starting server

To see the GUI go to: http://127.0.0.1:8188
"""


def _by_kind(warnings: list[StartupWarning], kind: str) -> list[StartupWarning]:
    return [w for w in warnings if w.kind == kind]


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.split("\n"), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_clean_start_up_has_nothing_to_report() -> None:
    assert find_startup_warnings(CLEAN_LOG) == []
    assert find_startup_warnings("") == []


def test_custom_node_import_failures_one_per_node_with_reason() -> None:
    found = _by_kind(find_startup_warnings(PORTABLE_LOG), "custom_node_import_failed")
    messages = [w.message for w in found]
    assert messages == [
        "custom node ComfyUI-Foo failed to import: No module named 'skimage'",
        "custom node ComfyUI-Broken failed to import: No module named 'comfy.graph_utils'",
        "custom node example_folder skipped: the lack of NODE_CLASS_MAPPINGS",
        "custom node ComfyUI-NoReason failed to import",
    ]
    # the first appearance: the "Cannot import" line, not the import-times entry
    assert found[0].line_no == _line_of(
        PORTABLE_LOG, "Cannot import C:\\ComfyUI_windows_portable\\ComfyUI\\custom_nodes\\ComfyUI-Foo"
    )
    assert found[3].line_no == _line_of(
        PORTABLE_LOG, "(IMPORT FAILED): C:\\ComfyUI_windows_portable\\ComfyUI\\custom_nodes\\ComfyUI-NoReason"
    )


def test_builtin_comfy_extras_failures_are_their_own_kind() -> None:
    found = _by_kind(find_startup_warnings(PORTABLE_LOG), "builtin_node_import_failed")
    assert [w.message for w in found] == [
        "built-in ComfyUI node module nodes_audio.py failed to import: No module named 'torchaudio'",
        "built-in ComfyUI node module nodes_audio_encoder.py failed to import (missing dependencies?)",
    ]


def test_missing_packages_deduplicated_with_pip_name_and_the_node_that_needs_them() -> None:
    found = _by_kind(find_startup_warnings(PORTABLE_LOG), "missing_package")
    messages = [w.message for w in found]
    assert messages[0] == "package 'sageattention' is not installed"
    assert "package 'torchaudio' is not installed (needed by nodes_audio.py)" in messages
    assert "package 'skimage' (pip install scikit-image) is not installed (needed by ComfyUI-Foo)" in messages
    onnx = [m for m in messages if "'onnxruntime'" in m]
    assert len(onnx) == 1 and "acceleration providers" in onnx[0]
    assert len(messages) == 4  # comfy.graph_utils is ComfyUI's own module, not a package to install
    assert found[0].line_no == _line_of(PORTABLE_LOG, "Could not load sageattention")


def test_warning_lines_and_python_warnings_without_their_source_echo() -> None:
    found = _by_kind(find_startup_warnings(PORTABLE_LOG), "warning")
    messages = [w.message for w in found]
    assert "[Crystools WARNING] No GPU monitoring libraries available." in messages
    assert any(m.startswith("[DEPRECATION WARNING] Detected import") for m in messages)
    # the comfy_extras header is folded into the builtin findings, not repeated as a warning
    assert not any("did not import correctly" in m for m in messages)
    assert not any("warnings.warn" in m for m in messages)


def test_a_traceback_explained_by_an_import_line_is_not_reported_twice() -> None:
    assert _by_kind(find_startup_warnings(PORTABLE_LOG), "error") == []
    log = (
        "Traceback (most recent call last):\n"
        '  File "C:\\ComfyUI\\comfy_extras\\nodes_glsl.py", line 35, in _check_opengl_availability\n'
        "    raise RuntimeError(\n"
        "RuntimeError: OpenGL dependencies not available.\n"
        "\n"
        "Cannot import C:\\ComfyUI\\comfy_extras\\nodes_glsl.py module for custom nodes: "
        "OpenGL dependencies not available.\n"
        "Warn!: Traceback (most recent call last):\n"
        '  File "C:\\ComfyUI\\custom_nodes\\X\\__init__.py", line 1, in <module>\n'
        "ValueError: bad config value\n"
    )
    found = find_startup_warnings(log)
    assert [(w.kind, w.message) for w in found] == [
        (
            "builtin_node_import_failed",
            "built-in ComfyUI node module nodes_glsl.py failed to import: OpenGL dependencies not available.",
        ),
        ("error", "ValueError: bad config value"),
    ]


def test_kinds_messages_and_order() -> None:
    found = find_startup_warnings(PORTABLE_LOG)
    assert all(w.kind in KINDS for w in found)
    assert all(len(w.message) <= MAX_MESSAGE for w in found)
    assert [w.line_no for w in found] == sorted(w.line_no for w in found)
    assert len({(w.kind, w.message) for w in found}) == len(found)
    assert found[0].to_dict().keys() == {"kind", "message", "line_no"}
    text = format_startup_warnings(found)
    assert text.splitlines()[0].startswith(f"line {found[0].line_no}: [")


def test_until_server_start_leaves_out_later_lines() -> None:
    found = find_startup_warnings(PORTABLE_LOG, until_server_start=True)
    assert not any("DEPRECATION" in w.message for w in found)


@pytest.mark.parametrize(
    "prefix",
    [
        "2025-02-23T14:17:10.154322 - ",  # the user-directory log / the /internal/logs view
        "2024-08-29 19:10:07,849 - root - INFO - ",  # the older comfyui.log
        "[2024-04-14 15:18] ",  # ComfyUI-Manager's comfyui.log
    ],
)
def test_log_file_prefixes_give_the_same_findings(prefix: str) -> None:
    prefixed = "\n".join(
        prefix + line if line and not line.startswith((" ", "\t")) else line
        for line in PORTABLE_LOG.split("\n")
    )
    plain = [(w.kind, w.message, w.line_no) for w in find_startup_warnings(PORTABLE_LOG)]
    assert [(w.kind, w.message, w.line_no) for w in find_startup_warnings(prefixed)] == plain


def test_warning_level_prefix_counts_as_a_warning() -> None:
    log = (
        "2024-10-19 01:10:51,542 - ComfyUI-CogVideoXWrapper - WARNING - model folder layout is deprecated\n"
        "2024-10-19 01:10:51,559 - root - INFO - all good\n"
    )
    found = find_startup_warnings(log)
    assert [(w.kind, w.message, w.line_no) for w in found] == [
        ("warning", "model folder layout is deprecated", 1)
    ]


def test_more_findings_than_the_limit_say_how_many_were_left_out() -> None:
    log = "\n".join(f"WARNING: thing {i} is odd" for i in range(30))
    found = find_startup_warnings(log, max_findings=10)
    assert len(found) == 10
    assert found[-1].message == "… and 21 more findings (see the log)"


def test_colour_codes_and_crlf_do_not_matter() -> None:
    log = "\x1b[33mWARNING: You need pytorch with cu130 or higher\x1b[0m\r\nStarting server\r\n"
    assert [w.message for w in find_startup_warnings(log)] == [
        "WARNING: You need pytorch with cu130 or higher"
    ]
