"""Settings resolution: flag > environment > ini > default, and errors that name the source."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from pytest_gemdirect.policy import POLICY_NAMES, QueuePolicy
from pytest_gemdirect.settings import SPECS, SPECS_BY_NAME, SettingError, Settings, resolve


def test_defaults_match_the_design_queue_policy() -> None:
    settings = resolve({}, {}, environ={})
    assert (settings.max_scene_retries, settings.scene_max_wait) == (1, 180.0)
    assert (settings.history_poll_interval, settings.history_max_attempts) == (2.0, 30)
    assert (settings.completion_grace, settings.ws_idle_timeout) == (30.0, 15.0)
    assert (settings.scenes, settings.story_mode, settings.logs_dir) == (3, "auto", Path("logs"))
    assert all(source == "default" for source in settings.sources.values())


def test_flag_beats_env_beats_ini() -> None:
    environ = {"GEMDIRECT_SCENES": "4", "GEMDIRECT_COMPLETION_GRACE": "12"}
    ini = {"scenes": "5", "completion_grace": "7", "history_max_attempts": "9"}
    settings = resolve({"scenes": "2"}, ini, environ=environ)
    assert (settings.scenes, settings.sources["scenes"]) == (2, "from --scenes")
    assert (settings.completion_grace, settings.sources["completion_grace"]) == (
        12.0,
        "from GEMDIRECT_COMPLETION_GRACE",
    )
    assert (settings.history_max_attempts, settings.sources["history_max_attempts"]) == (
        9,
        "from ini gemdirect_history_max_attempts",
    )


def test_repeatable_settings_from_each_source() -> None:
    assert resolve({"sim_fault": ["stall@scene-002", "ws-drop"]}, {}, environ={}).sim_fault == (
        "stall@scene-002",
        "ws-drop",
    )
    assert resolve({}, {}, environ={"GEMDIRECT_SIM_FAULT": "crash, flaky"}).sim_fault == ("crash", "flaky")
    assert resolve({}, {"sim_fault": ["view-404"]}, environ={}).sim_fault == ("view-404",)


def test_secret_never_shown() -> None:
    settings = resolve({"llm_api_key": "sk-very-secret"}, {}, environ={})
    assert settings.llm_api_key == "sk-very-secret"
    assert settings.public()["llm_api_key"] == "***"
    assert "sk-very-secret" not in repr(settings.public())


def test_secret_not_echoed_in_errors() -> None:
    # The key has no format to get wrong, but no error path may print a secret either.
    with pytest.raises(SettingError) as excinfo:
        resolve({"llm_api_key": "sk-1", "scenes": "x"}, {}, environ={})
    assert "sk-1" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"scenes": "0"}, "scenes (from --scenes)"),
        ({"completion_grace": "-1"}, "completion_grace (from --completion-grace)"),
        ({"keyframe_size": "big"}, "keyframe_size (from --keyframe-size): must look like 1024x576"),
        ({"workflow": "/no/such/workflow.json"}, "workflow (from --workflow): no such file"),
        (
            {"history_poll_interval": "200"},
            "history_poll_interval (200 s, from --history-poll-interval) must be below",
        ),
    ],
)
def test_invalid_values_name_setting_and_source(flags: dict, message: str) -> None:
    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(flags, {}, environ={})


def test_every_setting_has_flag_ini_and_env_names() -> None:
    for spec in SPECS:
        assert spec.flag == "--" + (spec.flag_name or spec.name).replace("_", "-")
        assert spec.ini == "gemdirect_" + spec.name
        assert spec.env == "GEMDIRECT_" + spec.name.upper()
    assert len({spec.flag for spec in SPECS}) == len(SPECS)
    suites = next(spec for spec in SPECS if spec.name == "suites")
    assert (suites.flag, suites.ini, suites.env) == ("--suite", "gemdirect_suites", "GEMDIRECT_SUITES")


def test_every_field_is_a_setting_with_its_default() -> None:
    """The specs are the fields of Settings: same names, same order, same defaults."""
    built = {"sources", "faults", "policy"}  # not settings: where values came from, what is built from them
    names = [f.name for f in fields(Settings) if f.name not in built]
    assert [spec.name for spec in SPECS] == names
    defaults = Settings()
    for spec in SPECS:
        assert getattr(defaults, spec.name) == spec.default, spec.name
    resolved = resolve({}, {}, environ={})
    assert [getattr(resolved, n) for n in names] == [getattr(defaults, n) for n in names]


def test_queue_policy_is_built_once_from_the_settings() -> None:
    settings = resolve({"scene_max_wait": "50", "max_scene_retries": "3"}, {}, environ={})
    assert set(POLICY_NAMES) <= set(SPECS_BY_NAME)
    assert settings.policy.settings() == {name: getattr(settings, name) for name in POLICY_NAMES}
    assert (settings.policy.scene_max_wait, settings.policy.max_attempts) == (50.0, 4)
    assert {f.name for f in fields(QueuePolicy)} == set(POLICY_NAMES)


def test_faults_are_parsed_once_and_a_bad_name_names_the_setting() -> None:
    settings = resolve({"sim_fault": ["stall@scene-002"]}, {}, environ={})
    assert settings.faults.active("stall", "scene-002") and not settings.faults.active("stall", "scene-001")
    with pytest.raises(SettingError, match=r"sim_fault \(from GEMDIRECT_SIM_FAULT\).*no-such-fault"):
        resolve({}, {}, environ={"GEMDIRECT_SIM_FAULT": "no-such-fault"})


@pytest.mark.parametrize(
    ("flags", "said", "not_said"),
    [
        (
            {"scenes": "abc"},
            "invalid value 'abc' for scenes (from --scenes): must be a whole number",
            "literal",
        ),
        (
            {"sim_step_seconds": "fast"},
            "'fast' for sim_step_seconds (from --sim-step-seconds): must be a number",
            "float",
        ),
        ({"comfyui_url": ["not-a-url"]}, "invalid value 'not-a-url' for comfyui_url", "['"),
        (
            {"keyframe_size": "AxB"},
            "keyframe_size (from --keyframe-size): must look like 1024x576",
            "literal",
        ),
    ],
)
def test_errors_in_the_users_words(flags: dict, said: str, not_said: str) -> None:
    """The value as typed and what it must be; no Python exception text, no Python list."""
    with pytest.raises(SettingError) as excinfo:
        resolve(flags, {}, environ={})
    assert said in str(excinfo.value)
    assert not_said not in str(excinfo.value)
