"""Suite-wide rules: slow tests get a longer timeout, and in CI a skipped real-component test fails.

A test marked ``needs_real`` drives a real component (network namespaces, a tmpfs, Prometheus).
Where those can run -- CI as root on Linux -- a skip would make a green run lie, so the skip is
turned into a failure that keeps its reason. ``PEERSTORE_REQUIRE_REAL=1`` (set by .ci/run) forces
this anywhere, ``PEERSTORE_REQUIRE_REAL=0`` turns it off.
"""

from __future__ import annotations

import os
import sys

import pytest

SLOW_TIMEOUT = 3600  # seconds; the default for slow-marked tests without their own @pytest.mark.timeout


def real_components_required() -> bool:
    """Whether a skipped ``needs_real`` test must fail this run."""
    forced = os.environ.get("PEERSTORE_REQUIRE_REAL", "").strip()
    if forced:
        return forced not in ("0", "false", "no")
    in_ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return in_ci and sys.platform.startswith("linux") and os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("needs_real")
        and real_components_required()
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} needs a real component and skipped: {reason}\n"
            "This run requires real-component tests to run (PEERSTORE_REQUIRE_REAL=1, or CI=true as root "
            "on Linux): install what the reason names (.ci/run does), or set PEERSTORE_REQUIRE_REAL=0."
        )
