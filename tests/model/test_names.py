"""Checkpoint names, version ids and manifest paths: what is accepted and what is refused."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstore.errors import InvalidNameError
from peerstore.model.names import (
    MAX_FILES,
    MAX_NAME_LEN,
    MAX_PATH_LEN,
    MAX_SEGMENT_LEN,
    VersionId,
    parse_spec,
    parse_version_selector,
    validate_name,
    validate_paths,
)

NODE = "ab12cd34ef567890"

GOOD_NAMES = [
    "run1",
    "run1/step-500",
    "llama/checkpoint-500",
    "a.b_c+d-e",
    "x" * MAX_NAME_LEN,
    "/".join(["seg"] * 50),
    "..a/b..",
    "v1.0/.hidden",
]

BAD_NAMES = [
    ("", "empty"),
    ("../x", "'..'"),
    ("a/../b", "'..'"),
    ("a/./b", "'.'"),
    (".", "'.'"),
    ("/abs", "starts with '/'"),
    ("a/", "ends with '/'"),
    ("a//b", "'//'"),
    ("con\x00", "'\\x00'"),
    ("tab\there", "'\\t'"),
    ("has space", "' '"),
    ("back\\slash", "'\\\\'"),
    ("name@3", "'@'"),
    ("caf\u00e9", "'é'"),
    ("x" * (MAX_NAME_LEN + 1), "the limit is 200"),
    ("-rf", "command-line option"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_returned_unchanged(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(("name", "reason"), BAD_NAMES)
def test_bad_names_are_refused_saying_why(name, reason):
    with pytest.raises(InvalidNameError) as info:
        validate_name(name)
    assert reason in str(info.value)


def test_error_message_for_a_huge_name_stays_short():
    with pytest.raises(InvalidNameError) as info:
        validate_name("x" * 1_000_000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("run1/step-500", ("run1/step-500", None)),
        ("run1@3", ("run1", "3")),
        ("run1@3.ab12", ("run1", "3.ab12")),
        ("run1@3.AB12", ("run1", "3.ab12")),
        (f"run1@12.{NODE}", ("run1", f"12.{NODE}")),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["run1@", "@3", "run1@0", "run1@03", "run1@x", "run1@3.", "run1@3.zz", "run1@3@4", f"run1@3.{NODE}0", "../x@3"],
)
def test_parse_spec_refuses_bad_specs(spec):
    with pytest.raises(InvalidNameError):
        parse_spec(spec)


def test_version_selector_splits_counter_and_node_prefix():
    assert parse_version_selector("7") == (7, "")
    assert parse_version_selector("7.ab") == (7, "ab")


# ----------------------------------------------------------------- version ids


def test_version_id_str_and_parse_are_inverse():
    version = VersionId(3, NODE)
    assert str(version) == "3.ab12cd34ef567890"
    assert VersionId.parse(str(version)) == version


@given(st.integers(1, 2**63 - 1), st.text("0123456789abcdef", min_size=16, max_size=16))
@settings(max_examples=100, deadline=None)
def test_version_id_round_trips(counter, node):
    version = VersionId(counter, node)
    assert VersionId.parse(str(version)) == version


@given(
    st.lists(st.tuples(st.integers(1, 50), st.sampled_from(["0" * 16, NODE, "f" * 16])), min_size=2, max_size=6)
)
@settings(max_examples=100, deadline=None)
def test_version_ids_order_by_counter_then_node(pairs):
    versions = [VersionId(c, n) for c, n in pairs]
    assert [(v.counter, v.node) for v in sorted(versions)] == sorted(pairs)


@pytest.mark.parametrize(
    "text",
    ["", "3", "3.", ".ab12cd34ef567890", f"0.{NODE}", f"-1.{NODE}", f"03.{NODE}", "3.AB12CD34EF567890",
     "3.ab12", f"3.{NODE}0", f"3.{NODE}\n", f"1{'0' * 30}.{NODE}", "x.y"],
)
def test_version_id_parse_refuses_junk(text):
    with pytest.raises(InvalidNameError):
        VersionId.parse(text)


@pytest.mark.parametrize(
    ("counter", "node"),
    [(0, NODE), (-1, NODE), (True, NODE), (2**63, NODE), (1, "ab"), (1, NODE.upper()), (1, 5)],
)
def test_version_id_constructor_refuses_out_of_range(counter, node):
    with pytest.raises(InvalidNameError):
        VersionId(counter, node)


# ----------------------------------------------------------------- manifest paths

GOOD_PATH_SETS = [
    ["model.safetensors"],
    ["model.safetensors", "optimizer.pt", "trainer_state.json"],
    ["a/b", "a/c", "b"],
    ["with space.txt", "caf\u00e9/\u00fcber.bin", "日本語/ファイル"],
    ["ab", "a/b"],
    ["a/b", "ab/c"],
    ["..x", "x..", ".hidden"],
    ["s" * MAX_SEGMENT_LEN],
    ["/".join(["s" * 200] * 5)[: MAX_PATH_LEN]],
    [],
]

BAD_PATH_SETS = [
    (["../x"], "../x"),
    (["a/../b"], "a/../b"),
    (["/abs"], "/abs"),
    (["a//b"], "a//b"),
    (["a/./b"], "a/./b"),
    (["."], "'.'"),
    (["a/"], "a/"),
    ([""], "empty"),
    (["con\x00"], "con\\x00"),
    (["esc\x1b[31m"], "\\x1b"),
    (["del\x7f"], "\\x7f"),
    (["c1\x85"], "\\x85"),
    (["back\\slash"], "backslash"),
    (["x" * 300], "255"),
    (["\u00e9" * 200], "255"),  # 200 characters but 400 UTF-8 bytes
    (["/".join(["s" * 200] * 6)], str(MAX_PATH_LEN)),
    (["a.txt", "a.txt"], "twice"),
    (["A.txt", "a.txt"], "case-insensitive"),
    (["caf\u00e9", "cafe\u0301"], "case-insensitive"),  # NFC vs NFD
    (["CAF\u00c9", "cafe\u0301"], "case-insensitive"),
    (["dir/Stra\u00dfe", "dir/STRASSE"], "case-insensitive"),
    (["a", "a/b"], "needs it to be a directory"),
    (["a/b/c", "a/b"], "needs it to be a directory"),
    (["A", "a/b"], "needs it to be a directory"),
    (["lone\ud800"], "invalid character"),
]


@pytest.mark.parametrize("paths", GOOD_PATH_SETS)
def test_good_paths_pass(paths):
    validate_paths(paths)


@pytest.mark.parametrize(("paths", "shown"), BAD_PATH_SETS)
def test_hostile_paths_are_refused_naming_the_path(paths, shown):
    with pytest.raises(InvalidNameError) as info:
        validate_paths(paths)
    assert shown in str(info.value)


def test_too_many_files_are_refused_before_looking_at_them():
    with pytest.raises(InvalidNameError, match=str(MAX_FILES)):
        validate_paths(["f"] * (MAX_FILES + 1))


def test_max_files_distinct_paths_validate_quickly():
    validate_paths([f"d{i % 100}/f{i}" for i in range(MAX_FILES)])


@given(st.lists(st.text(max_size=12), max_size=8))
@settings(max_examples=200, deadline=None)
def test_validate_paths_only_ever_raises_invalid_name(paths):
    try:
        validate_paths(paths)
    except InvalidNameError:
        return
    # Accepted sets really are safe side by side.
    folded = [p.casefold() for p in paths]
    assert len(set(folded)) == len(paths)
    for p in paths:
        assert p and not p.startswith("/") and "\\" not in p
        assert all(seg not in ("", ".", "..") for seg in p.split("/"))
