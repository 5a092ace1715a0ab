"""A deterministic story of N scenes that needs no LLM: the same seed gives the same story."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from pytest_gemdirect.story.schema import check_count

_F_SUBJECTS = (
    "a lone paper boat",
    "a clockmaker's apprentice",
    "a white heron",
    "a small orange robot",
    "a night-shift tram driver",
    "an old lighthouse keeper",
    "a kite with a long red tail",
)
_F_PLACES = (
    "a flooded cathedral",
    "a terraced tea garden in mist",
    "a salt flat under a huge sky",
    "a canal city at blue hour",
    "a greenhouse full of ferns",
    "a mountain pass in falling snow",
    "a quiet harbour at sunrise",
    "a library lit by lanterns",
)
_F_LIGHT = ("soft morning light", "golden hour sun", "moonlight", "overcast diffuse light", "warm lamplight")
_F_ACTIONS = (
    "sets out at first light",
    "finds a hidden stair",
    "follows a drifting light",
    "crosses the water",
    "waits as the weather turns",
    "reaches the top",
    "looks back one last time",
)
_F_MOTION = (
    "slow push-in towards the subject",
    "gentle pan from left to right",
    "camera rises slowly, slight parallax",
    "static shot, mist drifting through",
    "slow dolly out revealing the scene",
)
_F_TITLES = (
    "The Long Way Round",
    "Small Lights",
    "Weather Report",
    "Quiet Harbour",
    "The Last Tram",
    "Paper Tides",
)


def _pick(options: Sequence[str], seed: int, *parts: object) -> str:
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def fallback_story(scene_count: int, seed: int) -> dict[str, Any]:
    """A deterministic story of ``scene_count`` scenes (no metadata), the same for the same seed."""
    check_count(scene_count)
    subject = _pick(_F_SUBJECTS, seed, "subject")
    home = _pick(_F_PLACES, seed, "home")
    scenes = []
    for index in range(1, scene_count + 1):
        place = home if index == 1 else _pick(_F_PLACES, seed, "place", index)
        action = _pick(_F_ACTIONS, seed, "action", index)
        light = _pick(_F_LIGHT, seed, "light", index)
        scenes.append(
            {
                "id": f"scene-{index:03d}",
                "title": f"{action[0].upper()}{action[1:]}",
                "visual_prompt": f"{subject} {action} in {place}, {light}, wide shot, cinematic, detailed",
                "motion_prompt": _pick(_F_MOTION, seed, "motion", index),
            }
        )
    return {
        "title": _pick(_F_TITLES, seed, "title"),
        "logline": f"{subject[0].upper()}{subject[1:]} travels from {home} in {scene_count} scenes.",
        "scenes": scenes,
    }
