"""The config's `watch:` section: naming and pattern keys, and directories that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerstore.errors import ConfigError
from peerstore.shell.config import config_from_mapping, render_example_config
from peerstore.watch.naming import DEFAULT_TEMPLATE
from tests.support.paths import REPO

KEY = "ab" * 32


def load(watch: dict, data_dir: str = "/srv/peerstore/data"):
    return config_from_mapping({"data_dir": data_dir, "cluster_key": KEY, "watch": watch}, "c.yaml", Path("/cfg"))


def test_defaults_and_every_key():
    assert load({}).watch.name_template == DEFAULT_TEMPLATE
    w = load({"paths": ["runs", "/abs/out"], "settle_seconds": 2, "pending_retry_seconds": 3, "name_prefix": "pi/",
              "name_template": "{prefix}{checkpoint}", "include": ["checkpoint-*"], "exclude": ["*-tmp", "a/b"]}).watch
    assert w.paths == (Path("/cfg/runs"), Path("/abs/out"))
    assert (w.include, w.exclude) == (("checkpoint-*",), ("*-tmp", "a/b"))
    assert w.naming().name_for("runs", "llama/checkpoint-5") == "pi/checkpoint-5"


@pytest.mark.parametrize("watch,key,words", [
    ({"name_template": "{run}"}, "watch.name_template", "lacks {checkpoint}"),
    ({"name_template": "{prefix}{step}/{checkpoint}"}, "watch.name_template", "{step}"),
    ({"name_prefix": "bad prefix"}, "watch.name_prefix", "contains ' '"),
    ({"include": "checkpoint-*"}, "watch.include", "list of glob patterns"),
    ({"exclude": [""]}, "watch.exclude", "non-empty"),
    ({"include": [3]}, "watch.include", "expected a string"),
])
def test_bad_naming_keys_name_the_key(watch, key, words):
    with pytest.raises(ConfigError) as err:
        load(watch)
    assert err.value.key.startswith(key) and words in str(err.value)


def test_a_watch_path_holding_the_data_dir_is_refused():
    with pytest.raises(ConfigError, match="holds this node's data_dir") as err:
        load({"paths": ["/srv/peerstore"]})
    assert err.value.key == "watch.paths.0"


def test_overlapping_watch_paths_are_refused():
    with pytest.raises(ConfigError, match="overlaps") as err:
        load({"paths": ["/runs", "/runs/llama"]})
    assert err.value.key == "watch.paths.1"


def test_the_example_config_documents_the_watch_keys():
    text = (REPO / "config.example.yaml").read_text()
    assert text == render_example_config()
    for key in ("name_template:", "include:", "exclude:", "docs/watcher.md"):
        assert key in text
