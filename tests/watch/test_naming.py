"""Checkpoint names from unit paths, and include/exclude patterns."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerstore.errors import InvalidNameError
from peerstore.model.names import MAX_NAME_LEN, validate_name
from peerstore.watch.naming import Naming, escape_segment, pattern_matches, run_and_checkpoint

NAMES = [
    # (root name, unit, prefix, template, name)
    ("runs", "llama/checkpoint-500", "", None, "llama/checkpoint-500"),
    ("llama", "checkpoint-500", "", None, "llama/checkpoint-500"),  # watching the run directory itself
    ("runs", "checkpoint-500", "", None, "runs/checkpoint-500"),
    ("runs", "model.pt", "", None, "runs/model.pt"),
    ("runs", "latest/model.safetensors", "", None, "latest/model.safetensors"),
    ("runs", "team/llama/exp1/step-100", "", None, "team/llama/exp1/step-100"),
    ("runs", "llama/checkpoint-500", "pi/", None, "pi/llama/checkpoint-500"),
    ("runs", "llama/checkpoint-500", "pi-", None, "pi-llama/checkpoint-500"),
    ("runs", "llama/run 2", "", None, "llama/run+202"),
    ("runs", "llama/a+b", "", None, "llama/a+2Bb"),
    ("runs", "llama/-x", "", None, "llama/+2Dx"),
    ("runs", "llama/x-", "", None, "llama/x-"),
    ("runs", "llama/caf\u00e9", "", None, "llama/caf+C3+A9"),
    ("runs", "llama/v@2", "", None, "llama/v+402"),
    ("my runs", "checkpoint-5", "", None, "my+20runs/checkpoint-5"),
    ("", "checkpoint-5", "", None, "checkpoint-5"),  # a root without a name ("/")
    ("runs", "llama/checkpoint-500", "", "{checkpoint}", "checkpoint-500"),
    ("runs", "llama/checkpoint-500", "x", "{prefix}/{run}--{checkpoint}", "x/llama--checkpoint-500"),
    ("runs", "llama/checkpoint-500", "", "ckpt/{run}/{checkpoint}", "ckpt/llama/checkpoint-500"),
]


@pytest.mark.parametrize(("root", "unit", "prefix", "template", "name"), NAMES)
def test_names(root, unit, prefix, template, name):
    naming = Naming(prefix=prefix) if template is None else Naming(prefix=prefix, template=template)
    assert naming.name_for(root, unit) == name
    assert validate_name(name) == name


def test_undecodable_file_names_escape_apart_from_real_characters():
    # surrogateescape would give both the bytes C3 A9: escaping must keep them apart
    assert escape_segment("\udcc3\udca9") != escape_segment("\u00e9")


def test_run_and_checkpoint_are_the_path_split_at_its_last_segment():
    assert run_and_checkpoint("runs", "a/b/c") == ("a/b", "c")
    assert run_and_checkpoint("runs", "c") == ("runs", "c")


def test_a_name_over_the_limit_is_refused_saying_what_to_shorten():
    with pytest.raises(InvalidNameError, match="shorten the path"):
        Naming().name_for("runs", "llama/" + "x" * MAX_NAME_LEN)


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [("a b/", "contains ' '"), ("/abs", "must not start"), ("-x", "must not start"), ("a/../b", "'..'"),
     ("x@", "contains '@'"), ("p" * 101, "at most 100")],
)
def test_bad_prefixes_are_refused(prefix, problem):
    with pytest.raises(InvalidNameError, match="name_prefix") as info:
        Naming(prefix=prefix)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("template", "problem"),
    [("{run}", "lacks {checkpoint}"), ("{prefix}{user}/{checkpoint}", "{user} is not one of"),
     ("{checkpoint!r}", "is not one of"), ("{checkpoint:>10}", "is not one of"), ("{run}@{checkpoint}", "'@'"),
     ("{checkpoint", "watch name template"), ("", "1 to 200"), ("{checkpoint} x", "' '")],
)
def test_bad_templates_are_refused(template, problem):
    with pytest.raises(InvalidNameError) as info:
        Naming(template=template)
    assert problem in str(info.value)


PATTERNS = [
    # (include, exclude, unit, admitted)
    ((), (), "llama/checkpoint-500", True),
    (("checkpoint-*",), (), "llama/checkpoint-500", True),
    (("checkpoint-*",), (), "team/llama/checkpoint-5", True),
    (("checkpoint-*",), (), "llama/final", False),
    (("llama/*",), (), "llama/final", True),
    (("llama/*",), (), "gpt/final", False),
    (("llama/*",), (), "llama/x/step-5", True),  # fnmatch's * crosses '/'
    ((), ("*.ckpt",), "llama/last.ckpt", False),
    ((), ("*.ckpt",), "llama/checkpoint-500", True),
    (("checkpoint-*",), ("checkpoint-1??",), "llama/checkpoint-150", False),
    (("checkpoint-*",), ("checkpoint-1??",), "llama/checkpoint-1500", True),
    (("Checkpoint-*",), (), "llama/checkpoint-5", False),  # case-sensitive everywhere
]


@pytest.mark.parametrize(("include", "exclude", "unit", "admitted"), PATTERNS)
def test_include_and_exclude(include, exclude, unit, admitted):
    assert Naming(include=include, exclude=exclude).admits(unit) is admitted


def test_pattern_without_slash_matches_the_last_segment_only():
    assert pattern_matches("llama", "llama") and not pattern_matches("llama", "llama/checkpoint-5")


@pytest.mark.parametrize("patterns", [("",), ("x" * 257,), tuple(f"p{i}" for i in range(65)), ["a"]])
def test_bad_patterns_are_refused(patterns):
    with pytest.raises(InvalidNameError, match="watch include"):
        Naming(include=patterns)


ANY_CHAR = st.characters(blacklist_categories=())  # surrogates too: os.fsdecode makes them


@given(st.text(ANY_CHAR, min_size=1, max_size=30), st.text(ANY_CHAR, min_size=1, max_size=30))
def test_escaping_is_one_to_one_and_yields_name_characters(a, b):
    ea, eb = escape_segment(a), escape_segment(b)
    assert (ea == eb) == (a == b)
    assert re.fullmatch(r"[A-Za-z0-9._+][A-Za-z0-9._+-]*", ea)  # name characters, no leading '-'


@given(st.lists(st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=12), min_size=1, max_size=4))
def test_every_unit_path_gets_a_valid_name_or_a_clear_refusal(segments):
    segments = [s for s in segments if s not in (".", "..")]
    if not segments:
        return
    try:
        name = Naming(prefix="w/").name_for("runs", "/".join(segments))
    except InvalidNameError as err:
        assert "characters long" in str(err)
    else:
        assert validate_name(name) == name and name.startswith("w/")
