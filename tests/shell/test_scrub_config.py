"""The config's `scrub:` section: its keys, their bounds, and that the core gets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerstore.core.settings import CoreSettings
from peerstore.errors import ConfigError
from peerstore.shell.config import config_from_mapping, render_example_config
from peerstore.shell.daemon.node import core_settings

KEY = "ab" * 32


def load(scrub: dict | None):
    data = {"data_dir": "/srv/peerstore", "cluster_key": KEY}
    if scrub is not None:
        data["scrub"] = scrub
    return config_from_mapping(data, "c.yaml", Path("/cfg"))


def test_defaults_are_the_core_s_and_reach_the_core():
    config = load(None)
    assert config.scrub.period == CoreSettings().scrub_period == 7 * 86400
    assert config.scrub.max_bytes_per_second == CoreSettings().scrub_max_bytes_per_second
    settings = core_settings(load({"period": 60, "max_bytes_per_second": "4MiB"}))
    assert (settings.scrub_period, settings.scrub_max_bytes_per_second) == (60.0, 4 * 1024 * 1024)
    assert core_settings(load({"period": 0})).scrub_period == 0.0  # off


@pytest.mark.parametrize("scrub,key,words", [
    ({"period": -1}, "scrub.period", "seconds from 0"),
    ({"period": "weekly"}, "scrub.period", "seconds"),
    ({"max_bytes_per_second": "1KiB"}, "scrub.max_bytes_per_second", "size from 64KiB"),
    ({"rate": 5}, "scrub.rate", "unknown key"),
])
def test_bad_values_name_the_key(scrub, key, words):
    with pytest.raises(ConfigError) as err:
        load(scrub)
    assert key in str(err.value) and words in str(err.value)


def test_the_documented_file_explains_the_section():
    text = render_example_config()
    assert "\nscrub:\n  # Seconds in which every piece is re-read once" in text and "0 turns scrub off" in text
