"""A short run of the fuzz harness (bench/fuzz.py runs the long one): every parser that reads bytes from the
network accepts or refuses each generated input with the error users see; the codec twins agree."""
from __future__ import annotations

import pytest

from tests.fuzz.harness import TARGETS, run

INPUTS = 4000


@pytest.mark.parametrize("target", list(TARGETS))
def test_generated_inputs_are_accepted_or_refused_cleanly(target):
    report = run(target, INPUTS, seed=20261202)
    assert report.crashes == [], "\n".join(report.crashes[:3])
    assert report.hangs == []
    assert report.inputs == INPUTS
    if target != "codec twins":  # that target compares the twins and counts no refusals itself
        # The generator reaches both sides of each parser: some inputs pass, many are refused.
        assert 0.05 * INPUTS < report.refused < 0.98 * INPUTS, report.refused


def test_the_harness_reports_a_crash():
    """The rule can fail: a target that raises something other than a refusal is reported with its input."""
    TARGETS["always crashes"] = lambda rng: {}["missing"]
    try:
        report = run("always crashes", 3, seed=1)
    finally:
        del TARGETS["always crashes"]
    assert len(report.crashes) == 3 and "KeyError" in report.crashes[0] and "input 1-always crashes-0" in report.crashes[0]
