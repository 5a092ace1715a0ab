"""The video package: decoding every output shape, the per-scene checks, drift and the gallery clip.

All clips are made here: numpy frames written as PNG sequences with Pillow, or encoded with PyAV
into MP4, WebM, GIF, animated WebP and animated PNG (and with Pillow, the way ComfyUI's
SaveAnimatedPNG/SaveAnimatedWEBP write them).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pytest_gemdirect.video import (
    ClipReader,
    ClipWriter,
    DecodeError,
    Expected,
    Thresholds,
    check_frames,
    comparability,
    expected_output,
    expected_outputs,
    image_sequence,
    measure_drift,
    read_info,
    scan_scene,
    scene_drift,
    write_clip,
)

REPO = Path(__file__).resolve().parent.parent
SIZE = (160, 96)

# PyAV muxer, encoder, pixel format and file suffix of each container the tests write.
CONTAINERS = {
    "mp4": ("mp4", "libx264", "yuv420p", ".mp4"),
    "webm": ("webm", "libvpx-vp9", "yuv420p", ".webm"),
    "gif": ("gif", "gif", "rgb8", ".gif"),
    "webp": ("webp", "libwebp_anim", "yuv420p", ".webp"),
    "apng": ("apng", "apng", "rgb24", ".png"),
}


def moving(count: int, size: tuple[int, int] = SIZE) -> Iterator[np.ndarray]:
    """A gradient with a white square sliding across it: plenty of motion, never black or flat."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    side = height // 4
    for index in range(count):
        frame = base.copy()
        x = (index * max(2, width // 16)) % (width - side)
        frame[height // 3 : height // 3 + side, x : x + side] = 255
        yield frame


def still(count: int, value: int = 0, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    width, height = size
    return [np.full((height, width, 3), value, dtype=np.uint8) for _ in range(count)]


def write_pngs(frames: Iterator[np.ndarray] | list[np.ndarray], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        path = folder / f"frames_{index + 1:05d}_.png"
        Image.fromarray(frame).save(path, compress_level=1)
        paths.append(path)
    return paths


def encode(frames: Iterator[np.ndarray] | list[np.ndarray], path: Path, kind: str, fps: int = 8) -> Path:
    """Encode ``frames`` with PyAV into ``path`` as ``kind`` (a key of CONTAINERS)."""
    muxer, codec, pix_fmt, _ = CONTAINERS[kind]
    if codec not in av.codecs_available:  # older PyAV wheels build FFmpeg without libwebp's animation encoder
        return pillow_animation(list(frames), path, fps)
    with av.open(str(path), "w", format=muxer) as container:
        stream = container.add_stream(codec, rate=fps)
        first = True
        for array in frames:
            if first:
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = pix_fmt
                if codec == "libx264":
                    stream.options = {"preset": "ultrafast"}
                first = False
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def pillow_animation(frames: list[np.ndarray], path: Path, fps: float = 8.0) -> Path:
    """Save as ComfyUI's SaveAnimatedPNG/SaveAnimatedWEBP do: Pillow, ``save_all``, one duration."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000.0 / fps), loop=0)
    return path


# --- decoding: count and size for every container -----------------------------------------------


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_each_container_is_counted_and_sized(tmp_path: Path, kind: str) -> None:
    path = encode(moving(12), tmp_path / f"scene-001{CONTAINERS[kind][3]}", kind)

    info = read_info(path)

    assert (info.frame_count, info.size, info.container) == (12, SIZE, kind)
    assert info.fps == pytest.approx(8.0, rel=0.05)
    assert info.duration == pytest.approx(1.5, rel=0.05)


def test_a_png_sequence_is_one_clip_in_frame_order(tmp_path: Path) -> None:
    write_pngs(moving(12), tmp_path / "frames")
    # Numbers compare as numbers: frame 10 comes after frame 9, not after frame 1.
    (tmp_path / "frames" / "frames_00009_.png").rename(tmp_path / "frames" / "frames_9_.png")
    files = image_sequence(tmp_path / "frames")

    reader = ClipReader(files)
    indices = [frame.index for frame in reader]

    assert [p.name for p in files][7:10] == ["frames_00008_.png", "frames_9_.png", "frames_00010_.png"]
    assert indices == list(range(12))
    assert (reader.info.frame_count, reader.info.size, reader.info.container) == (12, SIZE, "image-sequence")
    assert reader.info.files == tuple(files)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_a_still_image_is_a_one_frame_clip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"keyframe{suffix}"
    Image.fromarray(next(moving(1))).save(path)

    info = read_info(path)

    assert (info.frame_count, info.size, info.fps) == (1, SIZE, None)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".gif"])
def test_frames_pillow_merged_count_as_the_frames_they_stand_for(tmp_path: Path, suffix: str) -> None:
    frames = list(moving(10))
    frames[4] = frames[3]  # a held frame: Pillow stores frames 3-4 as one frame shown twice as long
    path = pillow_animation(frames, tmp_path / f"anim{suffix}")

    reader = ClipReader(path, fps=8.0)
    greys = [frame.grey for frame in reader]

    assert (reader.info.stored_frames, reader.info.frame_count) == (9, 10)
    assert np.array_equal(greys[3], greys[4])
    # Without the rate, the shortest frame duration is the base: the same count.
    assert read_info(path).frame_count == 10


def test_a_file_that_does_not_decode_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "scene-003.mp4"
    bad.write_bytes(b"not a video" * 100)
    empty = tmp_path / "scene-004.webm"
    empty.write_bytes(b"")

    for path in (bad, empty, tmp_path / "missing.mp4"):
        with pytest.raises(DecodeError) as caught:
            read_info(path)
        assert caught.value.path == path
        assert str(path) in str(caught.value)


def test_a_broken_frame_in_a_sequence_is_named_and_control_characters_show(tmp_path: Path) -> None:
    files = write_pngs(moving(3), tmp_path)
    broken = tmp_path / "frame\x1b[31m_4.png"
    broken.write_bytes(files[0].read_bytes()[:60])

    with pytest.raises(DecodeError) as caught:
        read_info([*files, broken])

    assert "frame\\x1b[31m_4.png" in str(caught.value)
    assert "\x1b" not in str(caught.value)


# --- streaming -----------------------------------------------------------------------------------


def test_frames_come_one_at_a_time_before_the_clip_is_read(tmp_path: Path) -> None:
    files = write_pngs(moving(2), tmp_path)
    reader = ClipReader([*files, tmp_path / "not-yet-written.png"])

    frames = iter(reader)
    lazy = inspect.isgenerator(frames)
    assert lazy
    with pytest.raises(RuntimeError, match="once the frames have been read"):
        _ = reader.info
    assert next(frames).index == 0
    assert next(frames).index == 1
    # The third file is opened only now: the first two frames came before it was looked at.
    with pytest.raises(DecodeError, match="not-yet-written.png"):
        next(frames)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """250 frames of 1024x576 H.264."""
    return encode(moving(250, (1024, 576)), tmp_path_factory.mktemp("long") / "long.mp4", "mp4", fps=6)


def test_a_long_clip_streams_as_small_thumbnails(long_clip: Path) -> None:
    reader = ClipReader(long_clip)
    frames = iter(reader)
    seen = 0
    for frame in frames:
        # Each frame is yielded as it is decoded and holds only its thumbnail, never the picture.
        assert frame.index == seen
        assert (frame.width, frame.height, frame.grey.shape, frame.rgb) == (1024, 576, (36, 64), None)
        assert not frame.grey.flags.writeable
        seen += 1
    assert (reader.info.frame_count, reader.info.size, reader.info.codec) == (250, (1024, 576), "h264")
    with pytest.raises(RuntimeError, match="read once"):
        iter(reader)


def test_the_checks_read_a_generator_once(long_clip: Path) -> None:
    checks = check_frames(ClipReader(long_clip), "scene-001", expected_frames=250, expected_size=(1024, 576))

    assert (checks.frame_count, checks.ok, len(checks.motion_series)) == (250, True, 249)


# --- the checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["png", "mp4"])
def test_a_moving_clip_passes(tmp_path: Path, kind: str) -> None:
    source = (
        write_pngs(moving(25), tmp_path) if kind == "png" else encode(moving(25), tmp_path / "a.mp4", kind)
    )

    checks = check_frames(ClipReader(source), "scene-001", expected_frames=25, expected_size=SIZE)

    assert checks.ok, checks.problems
    assert checks.motion is not None and checks.motion > 0.5
    assert (checks.black_frames, checks.flat_frames) == ((), ())


@pytest.mark.parametrize("kind", ["png", "mp4", "apng"])
def test_a_frozen_clip_fails_naming_the_motion_and_its_threshold(tmp_path: Path, kind: str) -> None:
    frames = [next(moving(1))] * 25
    if kind == "png":
        source: Path | list[Path] = write_pngs(frames, tmp_path)
    else:
        source = encode(frames, tmp_path / f"a{CONTAINERS[kind][3]}", kind)

    checks = check_frames(ClipReader(source), "scene-002", expected_frames=25)

    assert checks.kinds() == {"frozen"}
    if kind == "mp4":  # lossy: H.264 leaves a trace of change between identical frames
        assert checks.motion is not None and 0.0 <= checks.motion < 0.5
        assert re.fullmatch(
            r"scene-002: frozen: motion 0\.\d\d is below the threshold 0\.50 \(--min-motion\)",
            checks.problems[0].message,
        )
    else:
        assert [p.message for p in checks.problems] == [
            "scene-002: frozen: motion 0.00 is below the threshold 0.50 (--min-motion)"
        ]
        assert checks.motion_series == (0.0,) * 24


def test_a_frozen_clip_saved_by_pillow_is_one_still_and_the_count_says_why(tmp_path: Path) -> None:
    path = pillow_animation([next(moving(1))] * 8, tmp_path / "frozen.png")

    checks = check_frames(ClipReader(path, fps=8.0), "scene-002", expected_frames=8)

    assert checks.kinds() == {"frame_count"}
    message = checks.problems[0].message
    assert message.startswith("scene-002: frame_count: 1 frame, expected 8")
    assert "the clip may be frozen" in message


@pytest.mark.parametrize("kind", ["png", "mp4"])
def test_black_frames_are_found_by_index(tmp_path: Path, kind: str) -> None:
    frames = list(moving(12))
    frames[3] = frames[4] = still(1, 0)[0]
    frames[9] = still(1, 5)[0]  # near black is black
    source = write_pngs(frames, tmp_path) if kind == "png" else encode(frames, tmp_path / "a.mp4", kind)

    checks = check_frames(ClipReader(source), "scene-003")

    assert checks.black_frames == (3, 4, 9)
    assert checks.flat_frames == ()  # black frames are reported once, as black
    assert checks.kinds() == {"black"}
    message = checks.problems[0].message
    assert message.startswith("scene-003: black: 3 of 12 frames black (frames 3, 4, 9): ")
    assert "at or below level 8 (--black-level); the threshold is 99% (--black-share)" in message


def test_a_flat_frame_is_found(tmp_path: Path) -> None:
    frames = list(moving(12))
    frames[5] = still(1, 128)[0]

    checks = check_frames(ClipReader(write_pngs(frames, tmp_path)), "scene-004")

    assert (checks.flat_frames, checks.black_frames) == ((5,), ())
    assert [p.message for p in checks.problems] == [
        "scene-004: flat: 1 of 12 frames flat (frame 5): pixel spread (standard deviation) 0.00"
        " is below the threshold 2.00 (--flat-std)"
    ]


def test_a_wrong_count_and_a_wrong_size_are_named(tmp_path: Path) -> None:
    path = encode(moving(12), tmp_path / "a.webm", "webm")

    checks = check_frames(ClipReader(path), "scene-005", expected_frames=25, expected_size=(1024, 576))

    assert [p.message for p in checks.problems] == [
        "scene-005: frame_count: 12 frames, expected 25",
        "scene-005: size: frames are 160x96, expected 1024x576",
    ]


def test_a_frame_of_another_size_in_a_sequence_is_named(tmp_path: Path) -> None:
    files = write_pngs(moving(6), tmp_path / "a")
    odd = write_pngs(moving(1, (320, 192)), tmp_path / "b")

    checks = check_frames(ClipReader([*files[:3], *odd, *files[4:]]), "scene-006")

    assert [p.message for p in checks.problems] == ["scene-006: size: frame 3 is 320x192, frame 0 is 160x96"]


def test_thresholds_are_parameters_and_none_switches_a_check_off(tmp_path: Path) -> None:
    frames = [still(1, 0)[0]] * 4
    source = write_pngs(frames, tmp_path)

    no_black = check_frames(ClipReader(source), "s", thresholds=Thresholds(black_share=None, min_motion=None))
    nothing = Thresholds(black_share=None, flat_std=None, min_motion=None)
    off = check_frames(ClipReader(source), "s", thresholds=nothing)
    strict = check_frames(ClipReader(source), "s", thresholds=Thresholds(black_level=0, min_motion=0.1))

    assert no_black.kinds() == {"flat"} and no_black.flat_frames == (0, 1, 2, 3)  # not black, so flat
    assert off.ok and (off.black_frames, off.flat_frames, off.motion) == ((), (), 0.0)
    assert strict.kinds() == {"black", "frozen"}
    assert "threshold 0.10 (--min-motion)" in strict.problems[1].message


def test_a_label_with_control_characters_is_shown_escaped(tmp_path: Path) -> None:
    checks = check_frames(ClipReader(write_pngs(still(2, 0), tmp_path)), "scene\x1b[2J")

    assert all(p.message.startswith("scene\\x1b[2J: ") for p in checks.problems)


# --- what the workflow says to expect ------------------------------------------------------------


def _workflow(name: str) -> dict[str, object]:
    return json.loads((REPO / "fixtures" / "workflows" / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_expected_frames_and_size_come_from_the_workflows_we_ship() -> None:
    assert expected_output(_workflow("svd_img2vid.json")) == Expected(25, 1024, 576, fps=6.0)
    assert expected_output(_workflow("keyframe_txt2img.json")) == Expected(1, 1024, 576)
    assert expected_output(_workflow("smoke.json")) == Expected(8, 256, 144)


# Shapes of workflows recorded against ComfyUI 0.3.64 (c3_success_video_outputs, g_interrupt).
VIDEO_OUTPUTS = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "reftrace_input.png"}},
    "2": {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "bilinear",
            "width": 128,
            "height": 96,
            "crop": "disabled",
        },
    },
    "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 8}},
    "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 8.0}},
    "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "format": "mp4", "codec": "h264"}},
    "6": {"class_type": "SaveWEBM", "inputs": {"images": ["3", 0], "codec": "vp9", "fps": 8.0, "crf": 32.0}},
    "7": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["3", 0], "fps": 8.0, "compress_level": 4}},
}
EMPTY_IMAGE_BATCH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
    "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 48}},
    "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "width": 256, "height": 256}},
    "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
}


def test_expected_output_follows_batches_scaling_and_video_nodes() -> None:
    assert expected_outputs(VIDEO_OUTPUTS) == {
        "5": Expected(8, 128, 96, 8.0),
        "6": Expected(8, 128, 96, 8.0),
        "7": Expected(8, 128, 96, 8.0),
    }
    assert expected_output(EMPTY_IMAGE_BATCH) == Expected(48, 256, 256)
    latent = _workflow("keyframe_txt2img.json")
    latent["5"]["inputs"]["batch_size"] = 4  # type: ignore[index]
    assert expected_output(latent).frames == 4


def test_a_crop_is_its_box_cut_at_the_pictures_edge() -> None:
    def cropped(x: int, y: int) -> Expected:
        return expected_output(
            {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 320, "height": 180, "batch_size": 1}},
                "2": {
                    "class_type": "ImageCrop",
                    "inputs": {"image": ["1", 0], "width": 256, "height": 144, "x": x, "y": y},
                },
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
            }
        )

    assert cropped(0, 0) == Expected(1, 256, 144)
    assert cropped(100, 50) == Expected(1, 220, 130)  # past the edge: cut there, as ComfyUI does
    assert cropped(999, 999) == Expected(1, 1, 1)  # x and y are kept inside the picture
    smoke = _workflow("smoke.json")
    assert expected_output(smoke) == Expected(8, 256, 144)


def test_what_cannot_be_known_is_none() -> None:
    keep_aspect = json.loads(json.dumps(VIDEO_OUTPUTS))
    keep_aspect["2"]["inputs"]["width"] = 0  # ComfyUI keeps the aspect: the size depends on the upload
    linked = _workflow("svd_img2vid.json")
    linked["3"]["inputs"]["video_frames"] = ["9", 0]  # type: ignore[index]  # from a primitive node
    cycle = {
        "1": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0]}},
        "2": {"class_type": "KSampler", "inputs": {"latent_image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    disagree = json.loads(json.dumps(VIDEO_OUTPUTS))
    disagree["7"]["inputs"]["images"] = ["2", 0]

    assert expected_output(keep_aspect) == Expected(8, None, None, 8.0)
    assert expected_output(linked) == Expected(None, 1024, 576, fps=6.0)
    assert expected_output(cycle) == Expected()
    assert expected_output({"1": {"class_type": "LoadImage", "inputs": {}}}) == Expected()
    assert expected_output(disagree) == Expected(None, 128, 96, 8.0)
    assert expected_output(disagree, "7") == Expected(1, 128, 96, 8.0)


# --- drift ---------------------------------------------------------------------------------------


def test_identical_runs_do_not_drift(tmp_path: Path) -> None:
    run = write_pngs(moving(12), tmp_path / "run")
    baseline = write_pngs(moving(12), tmp_path / "baseline")

    drift = scene_drift(run, baseline, "scene-001", with_ssim=True)

    assert not drift.flagged
    assert drift.min_psnr == math.inf and drift.mean_psnr == math.inf
    assert drift.ssim == (1.0,) * 12
    assert drift.message == "scene-001: drift: all 12 frames are identical to the baseline's"


def test_a_re_encoded_run_is_close_but_not_identical(tmp_path: Path) -> None:
    run = encode(moving(12), tmp_path / "run.mp4", "mp4")
    baseline = write_pngs(moving(12), tmp_path / "baseline")

    drift = scene_drift(run, baseline, "scene-001")

    assert not drift.flagged
    assert 30.0 < drift.min_psnr < math.inf
    assert "is within the tolerance 30.0 dB (--drift-tolerance)" in drift.message


def test_an_altered_scene_is_flagged_at_its_frame(tmp_path: Path) -> None:
    frames = list(moving(12))
    baseline = write_pngs(frames, tmp_path / "baseline")
    frames[5] = 255 - frames[5]
    run = write_pngs(frames, tmp_path / "run")

    drift = scene_drift(run, baseline, "scene-002", with_ssim=True)

    assert drift.flagged
    assert [i for i, value in enumerate(drift.psnr) if value != math.inf] == [5]
    assert drift.ssim is not None and drift.ssim[5] < 0.5
    assert drift.message.startswith("scene-002: drift: lowest PSNR ")
    assert drift.message.endswith(" dB (frame 5) is below the tolerance 30.0 dB (--drift-tolerance)")


def test_a_different_frame_count_or_size_is_flagged(tmp_path: Path) -> None:
    short = measure_drift(still(3, 10), still(4, 10), "scene-003")
    resized = measure_drift(still(2, 10), still(2, 10, (80, 48)), "scene-003")

    assert short.flagged and short.message == "scene-003: drift: 3 frames here, 4 in the baseline"
    assert resized.flagged and resized.message == (
        "scene-003: drift: cannot compare: frame 0 is 160x96 here and 80x48 in the baseline"
    )


def test_runs_of_another_workflow_or_seed_are_not_comparable() -> None:
    same = comparability(workflow_hash="abc", baseline_workflow_hash="abc", seed=42, baseline_seed=42)
    other_workflow = comparability(
        workflow_hash="abc", baseline_workflow_hash="def", seed=42, baseline_seed=42
    )
    other_seed = comparability(workflow_hash="abc", baseline_workflow_hash="abc", seed=42, baseline_seed=7)

    assert (same.comparable, same.reason) == (True, "")
    assert not other_workflow.comparable
    assert other_workflow.reason == "not comparable: the workflow hash abc differs from the baseline's def"
    assert not other_seed.comparable
    assert other_seed.reason == "not comparable: the seed 42 differs from the baseline's 7"


# --- the gallery clip ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_the_gallery_clip_decodes_with_every_frame(tmp_path: Path, suffix: str) -> None:
    frames = write_pngs(moving(25, (1024, 576)), tmp_path / "frames")

    clip = write_clip(ClipReader(frames, rgb_width=512), tmp_path / f"scene-001{suffix}", fps=6)

    info = read_info(clip.path)
    assert (info.frame_count, info.size) == (25, (512, 288))
    assert info.fps == pytest.approx(6.0)
    assert (clip.frames, clip.width, clip.height, clip.passes) == (25, 512, 288, 1)
    assert clip.bytes == clip.path.stat().st_size < 1_000_000
    with av.open(str(clip.path)) as container:
        frame = next(container.decode(video=0))
        assert (container.streams.video[0].codec_context.name, frame.format.name) == (
            "h264" if suffix == ".mp4" else "vp9",
            "yuv420p",
        )
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [clip.path.name]


def test_the_gallery_clip_has_even_sides(tmp_path: Path) -> None:
    clip = write_clip(moving(4, (321, 181)), tmp_path / "odd.mp4")

    assert (clip.width, clip.height) == (320, 180)
    assert read_info(clip.path).size == (320, 180)


def test_a_clip_over_its_budget_is_encoded_again_smaller(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (144, 256, 3), dtype=np.uint8) for _ in range(25)]
    roomy = write_clip(noise, tmp_path / "roomy.mp4", budget=10_000_000)

    tight = write_clip(noise, tmp_path / "tight.mp4", budget=roomy.bytes // 2)

    assert roomy.passes == 1
    assert tight.passes >= 2 and not tight.over_budget
    assert tight.bytes <= roomy.bytes // 2
    assert read_info(tight.path).frame_count == 25


def test_a_clip_that_fails_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "scene-001.mp4"
    with pytest.raises(ValueError, match="RGB or grey uint8"):
        with ClipWriter(target) as writer:
            for frame in moving(3):
                writer.add(frame)
            writer.add(np.zeros((4, 4), dtype=np.float32))

    assert list(tmp_path.iterdir()) == []


# --- one pass: what the frames stage calls -------------------------------------------------------


def test_scan_scene_checks_and_writes_the_clip_in_one_pass(tmp_path: Path) -> None:
    frames = write_pngs(moving(25, (1024, 576)), tmp_path / "generated-frames")
    expected = expected_output(_workflow("svd_img2vid.json"))

    scene = scan_scene(frames, "scene-001", expected=expected, clip_path=tmp_path / "preview.mp4")

    assert scene.checks.ok, scene.checks.problems
    assert (scene.info.frame_count, scene.info.size) == (25, (1024, 576))
    assert scene.clip is not None and read_info(scene.clip.path).frame_count == 25


def test_scan_scene_of_an_undecodable_file_leaves_no_clip(tmp_path: Path) -> None:
    bad = tmp_path / "scene-001.mp4"
    bad.write_bytes(b"\x00" * 2000)

    with pytest.raises(DecodeError, match="scene-001.mp4"):
        scan_scene(bad, "scene-001", clip_path=tmp_path / "preview.mp4")

    assert [p.name for p in tmp_path.iterdir()] == ["scene-001.mp4"]
