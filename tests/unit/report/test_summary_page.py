"""The report's first page (templates/sections/summary.html.j2) rendered on its own: a failure slice found in the
embedding is named there with its interval, and nothing is said when none was found or none was searched."""
import pytest

from conftest import REPO

FOUND = {"bad": [], "passed": [], "undecided": [], "not_run": [], "headline": {"undecided": 0}}


def _page(robustness) -> str:
    from cvaudit.report.rendering import jinja_env
    env = jinja_env(REPO / "templates" / "report.html.j2")
    return env.get_template("sections/summary.html.j2").render(
        summary={"clever_hans": None, "robustness": robustness}, verdicts=[], found=FOUND, exported="", att={"rows": []})


CLUSTER = {"n": 35, "errors": 11, "accuracy": {"value": 0.686, "ci_low": 0.52, "ci_high": 0.814},
           "expected_accuracy": 0.919, "p_adjusted": 0.003, "classes": [{"value": "Sandal", "n": 20},
                                                                        {"value": "Sneaker", "n": 11}],
           "mistakes": [], "properties": []}


def test_a_failure_slice_is_named_on_the_first_page_with_its_interval():
    html = _page({"slices": {"error_clusters": {"flagged": 1, "flagged_clusters": [CLUSTER]}}})
    assert "Where it fails that nobody sliced" in html
    assert "35 test images" in html and "Sandal 20, Sneaker 11" in html
    assert "68.6%" in html and "[52.0%, 81.4%]" in html and "91.9% is expected" in html


@pytest.mark.parametrize("robustness", [None, {"slices": None}, {"slices": {"error_clusters": None}},
                                        {"slices": {"error_clusters": {"flagged": 0, "flagged_clusters": []}}}])
def test_nothing_is_said_without_a_failure_slice(robustness):
    assert "nobody sliced" not in _page(robustness)
