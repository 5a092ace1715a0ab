"""The queue policy (design §4): the settings that bound a scene's wait, named once.

Each name is a setting (flag ``--scene-max-wait``, ini ``gemdirect_scene_max_wait``, env
``GEMDIRECT_SCENE_MAX_WAIT``) and a field of :class:`QueuePolicy` under the same name; the
settings build the policy once, the job follower takes it, the summary, the terminal and the
report name the settings from here. Nothing here imports pytest or the harness.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_gemdirect.deadline import Deadline

POLICY_NAMES: tuple[str, ...] = (
    "max_scene_retries",
    "scene_max_wait",
    "history_poll_interval",
    "history_max_attempts",
    "completion_grace",
    "ws_idle_timeout",
)
"""The queue policy's setting names, in the order the summary and the report show them.

Each is a field of ``settings.Settings`` (its flag, default and help) and of :class:`QueuePolicy`.
"""

HEADER_NAMES: tuple[str, ...] = ("scene_max_wait", "completion_grace", "history_max_attempts")
"""The policy values a reader wants to see first (terminal header)."""


def flag_of(name: str) -> str:
    """``scene_max_wait`` -> ``--scene-max-wait``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class QueuePolicy:
    """The values one scene's job follower works under; each field is named after its setting."""

    scene_max_wait: float = 180.0  # --scene-max-wait: the whole attempt, queue to history
    history_poll_interval: float = 2.0  # --history-poll-interval
    history_max_attempts: int = 30  # --history-max-attempts: polls that find nothing after completion
    completion_grace: float = 30.0  # --completion-grace: completion signal -> history entry
    ws_idle_timeout: float = 15.0  # --ws-idle-timeout: silence before polling
    max_scene_retries: int = 1  # --max-scene-retries: re-queues after a failed attempt (the stage's)

    def __post_init__(self) -> None:
        for name in (
            "scene_max_wait",
            "history_poll_interval",
            "completion_grace",
            "ws_idle_timeout",
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

    @property
    def max_attempts(self) -> int:
        """Attempts a scene gets: the first plus its re-queues."""
        return 1 + self.max_scene_retries

    def scene_deadline(self) -> Deadline:
        """A new attempt's budget (--scene-max-wait), from now; a failure names the setting."""
        return Deadline(self.scene_max_wait, setting="scene_max_wait")

    def settings(self) -> dict[str, float | int]:
        """The values under their setting names (``scene_max_wait`` …), as the summary records them."""
        return {name: getattr(self, name) for name in POLICY_NAMES}
