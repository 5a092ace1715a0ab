"""Writes localGenSettings.json (the app's settings file, in the app's shape) from the test graphs.

Run ``python tests/data/gemdirect-app/build.py`` after changing a graph in tests/data/graphs/;
tests/test_app_settings.py checks the file is what this script writes. With the path of a full
recorded ``/object_info`` (``python build.py FULL.json``) it also writes object_info_app.json: the
recorded entries of every core class the test graphs use, for the preflight tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRAPHS = HERE.parent / "graphs"

# id: (label, graph file, mapping "NODE:INPUT" -> role)
PROFILES: dict[str, tuple[str, str, dict[str, str]]] = {
    "wan22-i2v": (
        "WAN 2.2 image to video",
        "wan22_i2v.json",
        {
            "5:text": "human_readable_prompt",
            "6:text": "negative_prompt",
            "7:image": "keyframe_image",
            "4:shift": "feta_weight",  # a role the harness has nothing for: noted, left alone
        },
    ),
    "wan22-flf": (
        "WAN first-last-frame (bookend)",
        "wan22_flf.json",
        {
            "5:text": "human_readable_prompt",
            "6:text": "negative_prompt",
            "7:image": "start_image",
            "8:image": "end_image",
        },
    ),
    "flux-keyframe": (
        "FLUX keyframe",
        "flux_t2i.json",
        {"5:text": "human_readable_prompt", "6:text": "negative_prompt"},
    ),
    "wan22-vhs": (
        "WAN 2.2 with VideoHelperSuite (custom nodes)",
        "custom_vhs.json",
        {"5:text": "human_readable_prompt", "7:image": "keyframe_image"},
    ),
    "svd-legacy": ("SVD (older file, placeholders)", "svd_app_nodes_dict.json", {}),
}


def settings() -> dict[str, object]:
    profiles = {}
    for profile_id, (label, name, mapping) in PROFILES.items():
        graph = json.loads((GRAPHS / name).read_text(encoding="utf-8"))
        profiles[profile_id] = {
            "id": profile_id,
            "label": label,
            "workflowJson": json.dumps(graph),  # the app keeps the graph as a JSON string
            "mapping": mapping,
            "metadata": {"source": f"tests/data/graphs/{name}"},
        }
    return {
        "comfyUIUrl": "http://127.0.0.1:8188",
        "imageWorkflowProfile": "flux-keyframe",
        "videoWorkflowProfile": "wan22-i2v",
        "sceneBookendWorkflowProfile": "wan22-flf",
        "keyframeMode": "single",
        "workflowProfiles": profiles,
    }


def text() -> str:
    return json.dumps(settings(), indent=2) + "\n"


def object_info_subset(full: Path) -> dict[str, object]:
    recorded = json.loads(full.read_text(encoding="utf-8"))
    recorded = recorded.get("body", recorded)
    used = {
        node["class_type"]
        for name in {graph for _, graph, _ in PROFILES.values()} | {"svd_app.json", "wan22_flf.json"}
        for node in _nodes(json.loads((GRAPHS / name).read_text(encoding="utf-8"))).values()
    }
    return {
        "source": f"{full.name}, recorded from ComfyUI 0.3.64 (no model files installed)",
        "body_subset": {name: recorded[name] for name in sorted(used) if name in recorded},
    }


def _nodes(graph: dict[str, object]) -> dict[str, dict[str, object]]:
    inner = graph.get("nodes") if isinstance(graph.get("nodes"), dict) else graph
    return inner  # type: ignore[return-value]


if __name__ == "__main__":
    (HERE / "localGenSettings.json").write_text(text(), encoding="utf-8")
    if len(sys.argv) > 1:
        subset = object_info_subset(Path(sys.argv[1]))
        (HERE / "object_info_app.json").write_text(json.dumps(subset, indent=1) + "\n", encoding="utf-8")
