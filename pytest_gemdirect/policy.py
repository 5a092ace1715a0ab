"""The queue policy (design §4): the settings that bound a scene's wait, named once.

Each entry is a setting (flag ``--scene-max-wait``, ini ``gemdirect_scene_max_wait``, env
``GEMDIRECT_SCENE_MAX_WAIT``); ``settings.py`` turns them into setting specs, the job follower
takes a :class:`QueuePolicy`, the summary, the terminal and the report name them from here.
Nothing here imports pytest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PolicySetting:
    """One queue-policy setting: its name, default, whether it is a count, and its help."""

    name: str
    default: float | int
    help: str
    whole: bool = False  # a count (int) rather than seconds (float)
    minimum: float = 0.0  # values must be above this (seconds) or at least it (counts)

    @property
    def flag(self) -> str:
        return flag_of(self.name)


POLICY_SETTINGS: tuple[PolicySetting, ...] = (
    PolicySetting("max_scene_retries", 1, "re-queues of a scene after a failed attempt", whole=True),
    PolicySetting("scene_max_wait", 180.0, "seconds for a whole attempt, queue to frames"),
    PolicySetting("history_poll_interval", 2.0, "seconds between /history polls"),
    PolicySetting("history_max_attempts", 30, "/history polls before giving up", whole=True, minimum=1),
    PolicySetting("completion_grace", 30.0, "seconds after completion until outputs must be in history"),
    PolicySetting("ws_idle_timeout", 15.0, "seconds of WebSocket silence before polling"),
)
POLICY_NAMES: tuple[str, ...] = tuple(s.name for s in POLICY_SETTINGS)
"""The queue policy's setting names, in the order the summary and the report show them."""

HEADER_NAMES: tuple[str, ...] = ("scene_max_wait", "completion_grace", "history_max_attempts")
"""The policy values a reader wants to see first (terminal header)."""


def flag_of(name: str) -> str:
    """``scene_max_wait`` -> ``--scene-max-wait``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class QueuePolicy:
    """The values one scene's job follower works under; each field is named after its setting."""

    scene_max_wait_s: float = 180.0  # --scene-max-wait: the whole attempt, queue to history
    history_poll_interval_s: float = 2.0  # --history-poll-interval
    history_max_attempts: int = 30  # --history-max-attempts: polls that find nothing after completion
    completion_grace_s: float = 30.0  # --completion-grace: completion signal -> history entry
    ws_idle_timeout_s: float = 15.0  # --ws-idle-timeout: silence before polling
    max_scene_retries: int = 1  # --max-scene-retries: re-queues after a failed attempt (the stage's)

    def __post_init__(self) -> None:
        for name in (
            "scene_max_wait_s",
            "history_poll_interval_s",
            "completion_grace_s",
            "ws_idle_timeout_s",
        ):
            value = getattr(self, name)
            if not float(value) > 0:
                raise ValueError(f"QueuePolicy.{name} must be positive, got {value!r}")
        if int(self.history_max_attempts) < 1:
            raise ValueError(
                f"QueuePolicy.history_max_attempts must be >= 1, got {self.history_max_attempts!r}"
            )
        if int(self.max_scene_retries) < 0:
            raise ValueError(f"QueuePolicy.max_scene_retries must be >= 0, got {self.max_scene_retries!r}")

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> QueuePolicy:
        """The policy from resolved settings (names as in :data:`POLICY_NAMES`)."""
        return cls(
            scene_max_wait_s=float(values["scene_max_wait"]),
            history_poll_interval_s=float(values["history_poll_interval"]),
            history_max_attempts=int(values["history_max_attempts"]),
            completion_grace_s=float(values["completion_grace"]),
            ws_idle_timeout_s=float(values["ws_idle_timeout"]),
            max_scene_retries=int(values["max_scene_retries"]),
        )

    @property
    def max_attempts(self) -> int:
        """Attempts a scene gets: the first plus its re-queues."""
        return 1 + self.max_scene_retries

    def settings(self) -> dict[str, float | int]:
        """The values under their setting names (``scene_max_wait`` …), as the summary records them."""
        return {
            "max_scene_retries": self.max_scene_retries,
            "scene_max_wait": self.scene_max_wait_s,
            "history_poll_interval": self.history_poll_interval_s,
            "history_max_attempts": self.history_max_attempts,
            "completion_grace": self.completion_grace_s,
            "ws_idle_timeout": self.ws_idle_timeout_s,
        }
