"""``peerstore.gossip`` exports its names lazily: the package still offers every one of
them, and reading its settings (the config reader does) does not load SWIM."""

from __future__ import annotations

import subprocess
import sys

import pytest

import peerstore.gossip as gossip
from peerstore.gossip import effects, state, swim


def test_every_exported_name_is_the_submodules_own():
    homes = {"effects": effects, "state": state, "swim": swim}
    assert sorted(gossip.__all__) == sorted(gossip._EXPORTS)
    for name in gossip.__all__:
        assert getattr(gossip, name) is getattr(homes[gossip._EXPORTS[name]], name)
        assert name in dir(gossip)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gossip.Nope  # noqa: B018


def test_reading_the_settings_does_not_load_swim():
    probe = ("import sys; import peerstore.gossip.settings; "
             "print(sorted(m for m in sys.modules if m.startswith('peerstore.gossip')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['peerstore.gossip', 'peerstore.gossip.settings']"
