"""The app's settings file, its profiles and mappings, the graph shapes, roles and expectations (issue 20)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_gemdirect.app_settings import load_app_settings, run_graphs
from pytest_gemdirect.comfyui.roles import RoleError, parse_mapping, plan_roles
from pytest_gemdirect.comfyui.workflow import (
    ScenePatch,
    WorkflowError,
    adapt_to_server,
    load_workflow,
    parse_workflow,
    patch_workflow,
    preflight,
)
from pytest_gemdirect.settings import SettingError, Settings, resolve
from pytest_gemdirect.startup_checks import check_startup
from pytest_gemdirect.video import check_frames, expected_output

DATA = Path(__file__).resolve().parent / "data"
APP = DATA / "gemdirect-app" / "localGenSettings.json"
GRAPHS = DATA / "graphs"
OBJECT_INFO = DATA / "gemdirect-app" / "object_info_app.json"  # recorded, the classes the graphs use


def settings(**flags: Any) -> Settings:
    return resolve({"app_settings": str(APP), **flags}, {}, environ={})


def patch(**fields: Any) -> ScenePatch:
    base: dict[str, Any] = {
        "image_name": "up/start.png",
        "filename_prefix": "gemdirect/scene-001/r/frame",
        "seed": 7,
    }
    return ScenePatch(**{**base, **fields})


def by_class(workflow: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [node["inputs"] for node in workflow.values() if node["class_type"] == class_type]


def test_the_settings_file_is_what_its_script_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", APP.parent / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert APP.read_text(encoding="utf-8") == build.text(), "run tests/data/gemdirect-app/build.py"


def test_the_app_file_gives_its_profiles_with_graphs_from_json_strings() -> None:
    app = load_app_settings(APP)
    assert app.comfyui_url == "http://127.0.0.1:8188"
    assert (app.video_profile, app.bookend_profile, app.image_profile) == (
        "wan22-i2v",
        "wan22-flf",
        "flux-keyframe",
    )
    assert set(app.profiles) == {"wan22-i2v", "wan22-flf", "flux-keyframe", "wan22-vhs", "svd-legacy"}
    i2v = app.profiles["wan22-i2v"]
    assert i2v.workflow["8"]["class_type"] == "Wan22ImageToVideoLatent"
    assert i2v.mapping[("7", "image")] == "keyframe_image"


def test_video_profile_follows_the_keyframe_mode_and_the_flags() -> None:
    single = run_graphs(settings())
    assert single.video.profile_id == "wan22-i2v" and single.keyframe is None
    assert single.video.plan.keyframe == ("7", "image")
    assert single.video.plan.prompt == (("5", "text"),) and single.video.plan.negative == (("6", "text"),)
    assert any("feta_weight" in note and "4:shift" in note for note in single.notes), single.notes
    bookend = run_graphs(settings(keyframes="bookend"))
    assert bookend.video.profile_id == "wan22-flf" and bookend.keyframe_mode == "bookend"
    assert (bookend.video.plan.start, bookend.video.plan.end) == (("7", "image"), ("8", "image"))
    chosen = run_graphs(settings(video_profile="svd-legacy", image_profile="app"))
    assert chosen.video.profile_id == "svd-legacy" and chosen.video.plan.keyframe == ("2", "image")
    assert chosen.keyframe is not None and chosen.keyframe.profile_id == "flux-keyframe"


def test_keyframe_mode_comes_from_the_app_file_when_the_flag_is_unset(tmp_path: Path) -> None:
    data = json.loads(APP.read_text(encoding="utf-8"))
    data["keyframeMode"] = "bookend"
    path = tmp_path / "localGenSettings.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    graphs = run_graphs(resolve({"app_settings": str(path)}, {}, environ={}))
    assert (graphs.keyframe_mode, graphs.video.profile_id) == ("bookend", "wan22-flf")
    single = run_graphs(resolve({"app_settings": str(path), "keyframes": "single"}, {}, environ={}))
    assert (single.keyframe_mode, single.video.profile_id) == ("single", "wan22-i2v")


def _startup(s: Settings) -> None:
    check_startup(s, rootpath=Path.cwd(), inipath=None)


def test_unknown_profile_lists_the_profiles_the_file_has() -> None:
    with pytest.raises(SettingError) as caught:
        _startup(settings(video_profile="wan-typo"))
    message = str(caught.value)
    assert "app_settings (from --app-settings)" in message and "'wan-typo'" in message
    assert "the file has: flux-keyframe, svd-legacy, wan22-flf, wan22-i2v, wan22-vhs" in message


def test_a_profile_needs_the_app_file() -> None:
    with pytest.raises(SettingError, match="video_profile .* --app-settings is not set"):
        _startup(resolve({"video_profile": "wan22-i2v"}, {}, environ={}))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("99:image", "names node 99, which the graph lacks"),
        ("7:picture", "names input picture of node 7 (LoadImage), which that node does not have"),
    ],
)
def test_a_bad_mapping_names_the_file_the_profile_the_node_and_the_input(
    tmp_path: Path, key: str, expected: str
) -> None:
    data = json.loads(APP.read_text(encoding="utf-8"))
    data["workflowProfiles"]["wan22-i2v"]["mapping"][key] = "keyframe_image"
    path = tmp_path / "localGenSettings.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SettingError) as caught:
        _startup(resolve({"app_settings": str(path)}, {}, environ={}))
    assert f"{path} profile wan22-i2v: mapping {key} (keyframe_image) {expected}" in str(caught.value)
    # a broken profile the run does not use stops nothing
    _startup(resolve({"app_settings": str(path), "video_profile": "svd-legacy"}, {}, environ={}))


def test_a_role_the_run_needs_and_nothing_places_is_a_startup_error() -> None:
    with pytest.raises(SettingError) as caught:
        _startup(settings(keyframes="bookend", video_profile="wan22-i2v"))
    message = str(caught.value)
    # Wan22ImageToVideoLatent's start_image places the start; nothing takes an end keyframe
    assert "profile wan22-i2v: bookend mode needs a LoadImage for end_image" in message
    assert "LoadImage nodes: 7" in message


def test_without_a_comfyui_url_the_header_says_the_app_url_is_not_used() -> None:
    from pytest_gemdirect.pytest_plugin.terminal import describe_targets

    comfy = describe_targets(settings())["comfyui"]
    assert comfy.startswith("embedded simulator (SIMULATED)")
    assert "comfyUIUrl http://127.0.0.1:8188 is not used" in comfy
    assert "--comfyui-url=http://127.0.0.1:8188" in comfy
    attached = describe_targets(settings(comfyui_url=["http://127.0.0.1:9000"]))["comfyui"]
    assert attached == "attach http://127.0.0.1:9000"


# --- shapes ---------------------------------------------------------------------------------------


def test_every_shape_the_app_writes_gives_the_same_graph(tmp_path: Path) -> None:
    graph = load_workflow(GRAPHS / "svd_app.json")
    assert load_workflow(GRAPHS / "svd_app_nodes_dict.json") == graph
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": graph, "client_id": "x"}), encoding="utf-8")
    assert load_workflow(wrapped) == graph


def test_ui_format_and_empty_files_are_refused_saying_what_to_do() -> None:
    with pytest.raises(WorkflowError, match=r"UI format .*Export \(API\)"):
        parse_workflow({"nodes": [{"id": 1, "type": "LoadImage"}], "links": []}, source="ui.json")
    with pytest.raises(WorkflowError, match=r"empty.json: the workflow is empty"):
        parse_workflow({}, source="empty.json")


# --- the scene's words, seed and keyframes in the graph ---------------------------------------------


def test_mapped_roles_get_the_scene_words_seed_and_keyframe() -> None:
    graphs = run_graphs(settings())
    queued = patch_workflow(
        graphs.video.workflow,
        patch(prompt="a red kite over dunes", negative_prompt="text, watermark"),
        plan=graphs.video.plan,
    )
    assert queued["5"]["inputs"]["text"] == "a red kite over dunes"
    assert queued["6"]["inputs"]["text"] == "text, watermark"
    assert queued["7"]["inputs"]["image"] == "up/start.png"
    assert queued["9"]["inputs"]["seed"] == 7
    assert queued["12"]["inputs"]["filename_prefix"] == "gemdirect/scene-001/r/frame"
    assert queued["4"]["inputs"]["shift"] == graphs.video.workflow["4"]["inputs"]["shift"], "ignored role"


def test_without_a_mapping_the_wiring_places_prompt_negative_and_both_keyframes() -> None:
    graph = load_workflow(GRAPHS / "wan22_flf.json")  # the prompt reaches the sampler through the FLF node
    queued = patch_workflow(
        graph, patch(end_image_name="up/end.png", prompt="dawn", negative_prompt="dusk", seed=11)
    )
    assert (queued["7"]["inputs"]["image"], queued["8"]["inputs"]["image"]) == ("up/start.png", "up/end.png")
    assert (queued["5"]["inputs"]["text"], queued["6"]["inputs"]["text"]) == ("dawn", "dusk")
    assert queued["10"]["inputs"]["seed"] == 11


def test_every_sampler_gets_the_seed_noise_seed_included() -> None:
    graph = load_workflow(GRAPHS / "wan22_i2v.json")
    graph["20"] = {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 1, "model": ["4", 0]}}
    queued = patch_workflow(graph, patch(seed=99))
    assert queued["9"]["inputs"]["seed"] == 99 and queued["20"]["inputs"]["noise_seed"] == 99


def test_placeholders_are_replaced_wherever_they_stand() -> None:
    graph = load_workflow(GRAPHS / "svd_app.json")
    graph["8"]["inputs"]["value"] = "shot: __SCENE_PROMPT__ (end)"
    queued = patch_workflow(graph, patch(prompt="a lighthouse"))
    assert queued["2"]["inputs"]["image"] == "up/start.png"
    assert queued["7"]["inputs"]["filename_prefix"] == "gemdirect/scene-001/r/frame"
    assert queued["8"]["inputs"]["value"] == "shot: a lighthouse (end)"
    assert "__" not in json.dumps(queued)


def test_a_mapping_may_not_give_one_role_two_inputs() -> None:
    graph = load_workflow(GRAPHS / "wan22_flf.json")
    mapping = parse_mapping({"7:image": "start_image", "8:image": "start_image"}, graph, source="p")
    with pytest.raises(RoleError, match="role start_image is mapped to 2 inputs"):
        plan_roles(graph, mapping, bookend=True, source="p")


def test_a_graph_whose_prompt_has_no_place_is_refused() -> None:
    graph = load_workflow(GRAPHS / "wan22_i2v.json")
    del graph["9"]["inputs"]["positive"], graph["9"]["inputs"]["negative"]  # two encoders, wired to nothing
    for encoder in ("5", "6"):
        graph[encoder]["_meta"]["title"] = "Text"  # and titled neither Positive nor Negative
    with pytest.raises(RoleError, match="no input takes the scene's prompt: map one of 5:text, 6:text"):
        plan_roles(graph, {}, bookend=False, source="mine.json")


# --- preflight: separators, closest names, custom classes -----------------------------------------


def _object_info() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(OBJECT_INFO.read_text(encoding="utf-8"))["body_subset"]
    return data


def _offering(info: dict[str, Any], class_type: str, name: str, offered: list[str]) -> None:
    spec = info[class_type]["input"]["required"][name]
    spec[0] = offered


def test_model_names_match_with_either_separator_and_are_queued_as_the_server_spells_them() -> None:
    info = copy.deepcopy(_object_info())
    _offering(info, "ImageOnlyCheckpointLoader", "ckpt_name", ["SVD/svd_xt.safetensors"])
    graph = load_workflow(GRAPHS / "svd_app.json")
    assert not [p for p in preflight(graph, info) if "ckpt_name" in p or "checkpoint" in p]
    adapted, notes = adapt_to_server(graph, info)
    assert adapted["1"]["inputs"]["ckpt_name"] == "SVD/svd_xt.safetensors"
    assert notes and "SVD\\svd_xt.safetensors is offered by the server as SVD/svd_xt.safetensors" in notes[0]


def test_preflight_names_the_closest_offered_name_in_another_folder() -> None:
    info = copy.deepcopy(_object_info())
    _offering(
        info, "ImageOnlyCheckpointLoader", "ckpt_name", ["video/svd_xt.safetensors", "sd15.safetensors"]
    )
    problems = preflight(load_workflow(GRAPHS / "svd_app.json"), info)
    checkpoint = next(p for p in problems if "checkpoint" in p)
    assert "checkpoint SVD\\svd_xt.safetensors is not in models/checkpoints" in checkpoint
    assert "closest: video/svd_xt.safetensors (the same file in another folder)" in checkpoint


def test_preflight_reads_combo_specs_of_the_new_form() -> None:
    info = _object_info()
    graph = load_workflow(GRAPHS / "wan22_i2v.json")
    graph["12"]["inputs"]["codec"] = "vp9"  # SaveVideo's codec is ["COMBO", {"options": [...]}]
    assert any("codec = 'vp9' is not one the server offers" in p for p in preflight(graph, info))


def test_a_custom_node_profile_is_refused_naming_its_classes() -> None:
    problems = preflight(load_workflow(GRAPHS / "custom_vhs.json"), _object_info())
    assert problems[0].startswith("the server has no node class VHS_VideoCombine: VHS_VideoCombine (node 11)")
    assert "a custom node pack (or a newer ComfyUI) provides them" in problems[0]


# --- expectations from the graph ------------------------------------------------------------------


def test_frames_size_and_rate_come_from_the_video_latent_and_create_video() -> None:
    wan = expected_output(load_workflow(GRAPHS / "wan22_i2v.json"))
    assert (wan.frames, wan.width, wan.height, wan.fps) == (49, 1280, 544, 24.0)
    assert wan.frames_from == "node 8 (Wan22ImageToVideoLatent) length 49"
    flf = expected_output(load_workflow(GRAPHS / "wan22_flf.json"))
    assert (flf.frames, flf.width, flf.height, flf.fps) == (49, 832, 480, 16.0)
    svd = expected_output(load_workflow(GRAPHS / "svd_app.json"))
    assert (svd.frames, svd.width, svd.height, svd.fps) == (25, 576, 1024, 24.0)
    assert svd.frames_from == "node 3 (SVD_img2vid_Conditioning) video_frames 25"


def test_a_wan_length_the_vae_cannot_make_is_rounded_as_wan_decodes_it() -> None:
    graph = load_workflow(GRAPHS / "wan22_i2v.json")
    graph["8"]["inputs"]["length"] = 50  # 4 frames a latent step, plus the first: 49
    assert expected_output(graph).frames == 49


def test_a_short_clip_names_the_expected_count_and_where_it_came_from() -> None:
    import numpy as np

    from pytest_gemdirect.video import Frame

    frames = [
        Frame(i, 32, 32, np.full((32, 32), 40 + 9 * i, np.uint8), None, Path("x.png")) for i in range(12)
    ]
    expected = expected_output(load_workflow(GRAPHS / "wan22_i2v.json"))
    checks = check_frames(
        frames, "scene-001", expected_frames=expected.frames, expected_from=expected.frames_from
    )
    assert any(
        "12 frames, expected 49 (from node 8 (Wan22ImageToVideoLatent) length 49)" in p.message
        for p in checks.problems
    ), checks.problems


def test_a_plain_one_keyframe_workflow_runs_in_bookend_mode_on_the_start_keyframe() -> None:
    graphs = run_graphs(resolve({"keyframes": "bookend", "workflow": "smoke"}, {}, environ={}))
    assert graphs.keyframe_mode == "bookend"
    assert graphs.video.plan.keyframe is not None and graphs.video.plan.end is None
    assert any("the end keyframes are drawn and shown but not queued" in n for n in graphs.notes), (
        graphs.notes
    )
