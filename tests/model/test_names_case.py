"""Names that differ only by case: the second one is refused, because on macOS (and Windows)
both would be one directory. "Exists" is what the coordinator's catalog replica holds live."""

from __future__ import annotations

from peerstore.core import events as ev
from peerstore.model.catalog import Catalog, CatalogEntry
from peerstore.model.names import VersionId, name_key
from tests.support.core_driver import SHARD, CoreDriver

NODE = "ab12cd34ef567890"


def entry(name: str, counter: int = 1) -> CatalogEntry:
    return CatalogEntry(name, VersionId(counter, NODE), bytes(32), 10, 1, 1, 0.0)


def test_name_key_folds_case_only():
    assert name_key("Run1/Step-500") == name_key("run1/step-500") == "run1/step-500"
    assert name_key("run1/x") != name_key("run1/y")


def test_case_clash_sees_live_names_only():
    catalog = Catalog(entries=[entry("run1/x")])
    assert catalog.case_clash("Run1/x") == "run1/x"
    assert catalog.case_clash("RUN1/X") == "run1/x"
    assert catalog.case_clash("run1/x") is None  # the same name: a new version of it
    assert catalog.case_clash("run1/y") is None
    catalog.rm("run1/x")
    assert catalog.case_clash("Run1/x") is None  # removed names no longer exist


def test_names_left_by_a_race_stay_usable():
    """Two coordinators accepted run1/x and Run1/x at once (each checked its own replica);
    after the merge both exist, and puts to either go on rather than lock both out."""
    catalog = Catalog(entries=[entry("run1/x"), entry("Run1/x", 2)])
    assert catalog.case_clash("run1/x") is None
    assert catalog.case_clash("Run1/x") is None
    assert catalog.case_clash("RUN1/x") == "Run1/x"  # a third spelling is still refused


def test_a_put_differing_only_by_case_is_refused_with_a_clear_message():
    driver = CoreDriver(3)
    first = driver.result(driver.put(driver.ids[0], "run1/x", {"m": b"a" * (SHARD + 7)}))
    assert first.ok, first.final
    refused = driver.result(driver.put(driver.ids[1], "Run1/x", {"m": b"b" * 100}))
    assert isinstance(refused.final, ev.Failed)
    assert "Run1/x differs from the existing run1/x only by case" in refused.final.reason
    assert "macOS" in refused.final.reason
    again = driver.result(driver.put(driver.ids[1], "run1/x", {"m": b"c" * 100}))
    assert again.ok, again.final  # a new version of the existing name is fine
    listed = driver.result(driver.command(driver.ids[2], lambda c: ev.ListCommand(c)))
    assert {e.name for e in listed.final.entries} == {"run1/x"}
