"""Video checks for a scene's output files: decode, check, compare with a baseline, write a gallery clip.

A library: it imports nothing from pytest nor from the rest of the plugin, so the frames stage,
the report and a benchmark can all use it. Everything streams: a clip is read a frame at a time.
"""

from .checks import FrameChecker, FrameChecks, Problem, Thresholds, check_frames
from .clip import ClipWriter, WrittenClip, write_clip
from .decode import ClipInfo, ClipReader, DecodeError, Frame, image_sequence, read_info
from .drift import Comparability, Drift, DriftMeter, comparability, measure_drift, scene_drift
from .expected import Expected, expected_output, expected_outputs
from .scan import SceneVideo, scan_scene

__all__ = [
    "ClipInfo",
    "ClipReader",
    "ClipWriter",
    "Comparability",
    "DecodeError",
    "Drift",
    "DriftMeter",
    "Expected",
    "Frame",
    "FrameChecker",
    "FrameChecks",
    "Problem",
    "SceneVideo",
    "Thresholds",
    "WrittenClip",
    "check_frames",
    "comparability",
    "expected_output",
    "expected_outputs",
    "image_sequence",
    "measure_drift",
    "read_info",
    "scan_scene",
    "scene_drift",
    "write_clip",
]
