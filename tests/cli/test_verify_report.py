"""What `peerstore verify` prints and its exit code (peerstore.cli.verify_report)."""

from __future__ import annotations

from peerstore.cli.verify_report import EXIT_ALL_WELL, EXIT_PROBLEMS, exit_code, format_report

WELL = {
    "ok": True, "node_id": "a" * 16, "members": ["a" * 16, "b" * 16], "silent": [],
    "checked": {"checkpoints": 1, "copies": 10, "bytes": 10 * 1024 * 1024},
    "checkpoints": [{"name": "run1/step-5", "version": 3, "ok": True, "tolerance_now": 1,
                     "tolerance_reported": 1, "copies_ok": 10, "copies_expected": 10, "problems": [],
                     "more_problems": 0}],
}


def sick() -> dict:
    report = {**WELL, "ok": False}
    report["checkpoints"] = [{**WELL["checkpoints"][0], "ok": False, "tolerance_now": 0, "copies_ok": 9,
                              "problems": [{"kind": "corrupt", "node": "b" * 16,
                                            "detail": "the copy of data shard 1 of stripe 0 on bbbbbbbb does "
                                                      "not match its BLAKE3 id",
                                            "repair": "bbbbbbbb re-creates it from the intact copy on aaaaaaaa"}]}]
    return report


def test_all_well_prints_each_checkpoint_and_exits_0():
    text = format_report(WELL, "127.0.0.1:7421")
    assert exit_code(WELL) == EXIT_ALL_WELL == 0
    assert "10 piece copies (10.0 MiB)" in text and "2 live node(s)" in text
    assert "run1/step-5@3" in text and "tolerance 1 (at put 1)" in text
    assert text.splitlines()[-1] == "all well"


def test_problems_print_what_is_wrong_and_what_repair_will_do_and_exit_1():
    report = sick()
    text = format_report(report, "node")
    assert exit_code(report) == EXIT_PROBLEMS == 1
    assert "1 problem(s)" in text and "CORRUPT: the copy of data shard 1" in text
    assert "repair: bbbbbbbb re-creates it from the intact copy on aaaaaaaa" in text
    assert "run 'peerstore verify' again" in text and "all well" not in text


def test_silent_nodes_are_named_and_make_it_a_failure_and_a_missing_ok_is_not_ok():
    report = {**WELL, "ok": False, "silent": ["c" * 16]}
    text = format_report(report, "node")
    assert "NOT CHECKED: cccccccc did not answer" in text and exit_code(report) == 1
    assert exit_code({"checkpoints": []}) == 1  # a malformed report is never "all well"


def test_long_problem_lists_are_cut_in_text():
    report = sick()
    problem = report["checkpoints"][0]["problems"][0]
    report["checkpoints"][0]["problems"] = [problem] * 60
    report["checkpoints"][0]["more_problems"] = 5
    text = format_report(report, "node")
    assert text.count("CORRUPT:") == 50 and "... and 15 more (see --json)" in text


def test_status_shows_each_node_s_last_scrub_result_and_says_when_it_found_rot_or_lags():
    from peerstore.cli.verify_report import format_scrub

    scrub = {"enabled": True, "period": 604800.0, "rate": 355000, "behind": False, "passes": 2,
             "corrupt_found": 0, "pass_done": 10, "pass_total": 40, "last_pass_age": 7200.0,
             "last_pass_corrupt": 0, "recent_corrupt": []}
    nodes = [
        {"id": "a" * 16, "report": {"scrub": scrub}},
        {"id": "b" * 16, "report": {"scrub": {**scrub, "corrupt_found": 2, "last_pass_corrupt": 1,
                                              "recent_corrupt": ["ab" * 32], "behind": True}}},
        {"id": "c" * 16, "report": {"scrub": {**scrub, "last_pass_age": None}}},
        {"id": "d" * 16, "report": None},
        {"id": "e" * 16, "report": {"scrub": {**scrub, "enabled": False}}},
    ]
    text = "\n".join(format_scrub(nodes))
    assert text.startswith("scrub (every piece re-read once every 7.0 d):")
    assert "aaaaaaaa  2.0 h ago, 0 corrupt" in text and "10 of 40 pieces" in text and "0.35 MB/s" in text
    assert "cccccccc  none finished yet" in text and "dddddddd  no answer" in text
    assert "eeeeeeee  off (scrub.period: 0)" in text
    assert "scrub on bbbbbbbb found 2 corrupt piece(s)" in text and "abababababababab" in text
    assert "scrub on bbbbbbbb cannot re-read all its pieces within scrub.period" in text
    assert format_scrub([]) == []
