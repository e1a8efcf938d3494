"""The settings declarations: validation, environment parsing, precedence."""

from __future__ import annotations

import pytest

from gcfork.config import SETTINGS, resolve, settings_markdown
from gcfork.exceptions import ConfigError
from gcfork.policy import Policy
from gcfork.typing import WorkerInfo


def test_defaults() -> None:
    policy = Policy.from_settings({}, environ={})
    assert (policy.mode, policy.thresholds, policy.collect_before_freeze) == ("freeze", None, False)
    assert all(source == "default" for source in policy.sources.values())


def test_environment_wins_over_install_and_says_so() -> None:
    resolved = resolve({"thresholds": (1, 2, 3)}, {"GCFORK_THRESHOLDS": "7,8"})
    assert resolved["thresholds"].value == (7, 8)
    assert resolved["thresholds"].source == "env GCFORK_THRESHOLDS"
    assert resolve({}, {"GCFORK_THRESHOLDS": "default"})["thresholds"].value is None
    assert resolve({}, {"GCFORK_COLLECT_BEFORE_FREEZE": "Yes"})["collect_before_freeze"].value


def test_callable_thresholds_per_worker() -> None:
    policy = Policy.from_settings({"thresholds": lambda w: (100 * (w.index + 1), w.age)}, {})
    assert policy.thresholds_for(WorkerInfo(index=2, age=9)) == (300, 9)
    assert Policy.from_settings({"mode": "disable", "thresholds": (5,)}, {}).thresholds_for(
        WorkerInfo(0, 1)) is None


def test_callable_failing_at_run_time_names_the_worker() -> None:
    policy = Policy.from_settings({"thresholds": lambda w: (1,) if w.index == 0 else (-1,)}, {})
    with pytest.raises(ConfigError, match=r"index=1.*-1 is negative"):
        policy.thresholds_for(WorkerInfo(index=1, age=2))


@pytest.mark.parametrize(
    ("given", "env", "setting"),
    [
        ({"mode": "Freeze"}, {}, "mode"),
        ({"thresholds": [1, True]}, {}, "thresholds"),
        ({"thresholds": lambda: (1,)}, {}, "thresholds"),
        ({"report_interval": float("nan")}, {}, "report_interval"),
        ({"stats_dir": ""}, {}, "stats_dir"),
        ({}, {"GCFORK_REPORT_INTERVAL": "soon"}, "report_interval"),
    ],
)
def test_refusals_name_setting_value_and_allowed(
    given: dict[str, object], env: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(given, env)
    assert info.value.setting == setting
    message = str(info.value)
    assert repr(setting) in message and "allowed:" in message


def test_reference_docs_cover_every_setting_and_env_variable() -> None:
    text = settings_markdown()
    for setting in SETTINGS.values():
        assert f"### `{setting.name}`" in text
        assert setting.env in text


def test_the_policy_has_one_field_per_declared_setting() -> None:
    # A setting is declared once, in gcfork.config; the policy only carries it.
    import dataclasses

    from gcfork.config import SETTINGS
    from gcfork.policy import Policy

    fields = [f.name for f in dataclasses.fields(Policy) if f.name != "sources"]
    assert fields == list(SETTINGS)
    defaults = Policy.defaults()
    assert all(getattr(defaults, name) == s.default for name, s in SETTINGS.items())
    assert set(defaults.sources.values()) == {"default"}
