import pytest

from cvaudit.checks import CHECKS, judge, overall, run_checks


@pytest.mark.parametrize("value, higher, want", [(0.9, True, "pass"), (0.7, True, "warn"), (0.4, True, "fail"),
                                                 (0.1, False, "pass"), (0.3, False, "warn"), (0.6, False, "fail"),
                                                 (None, True, "n/a")])
def test_judge_in_both_directions(value, higher, want):
    t = {"warn": 0.8, "fail": 0.5} if higher else {"warn": 0.2, "fail": 0.5}
    assert judge(value, t, higher) == want


def test_checks_carry_their_metadata_and_overall_is_the_worst():
    results = {"eval": {"accuracy": 0.75, "n_test": 400, "gain_over_baseline": -0.02}}
    v = run_checks(results, {"accuracy": {"warn": 0.8, "fail": 0.5}, "gain_over_baseline": {"warn": 0.05, "fail": 0.0}})
    assert [x["status"] for x in v] == ["warn", "fail"] and overall(v) == "fail"
    assert all({"name", "category", "higher_is_better", "value", "n", "ci_low", "ci_high"} <= set(x) for x in v)
    assert all(c.category and c.label for c in CHECKS.values())
