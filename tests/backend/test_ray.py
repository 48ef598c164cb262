"""The Ray backend's own settings: defaults that the environment can override."""

import os

from microal.backend import ray as ray_backend


def test_environment_defaults_never_override_what_the_user_set(monkeypatch):
    for key in ray_backend.ENVIRONMENT_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    ray_backend.set_environment_defaults()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"
    assert (
        os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == ray_backend.ENVIRONMENT_DEFAULTS["RAY_TRAIN_ENABLE_PRINT_PATCH"]
    )
