import pytest

from cvaudit.report.checks import CHECKS, run_checks
from cvaudit.report.judge import judge, overall


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


# Known answers for every number a verdict rests on: each built so that a flipped sign, a swapped
# operand or a wrong threshold comparison changes the answer.
import numpy as np  # noqa: E402

from cvaudit.core import stats  # noqa: E402
from cvaudit.report.attribution_checks import (  # noqa: E402
    _per_image_gap,
    class_sensitivity,
    faithfulness_gain,
    method_sentence,
    road_gain,
    sanity_similarity,
)
from cvaudit.report.behaviour_checks import (  # noqa: E402
    accuracy,
    coverage,
    ece,
    group_gap,
    mce,
    robust_accuracy,
    rotation_accuracy,
    shape_bias,
    shift_gap,
    slice_gap,
)
from cvaudit.report.judge import _point, as_estimate, settle  # noqa: E402


@pytest.mark.parametrize("value, higher, want", [(0.5, True, "warn"), (0.8, True, "pass"), (0.5, False, "warn"),
                                                 (0.2, False, "pass")])
def test_a_value_on_a_threshold_is_on_the_good_side(value, higher, want):
    t = {"warn": 0.8, "fail": 0.5} if higher else {"warn": 0.2, "fail": 0.5}
    assert _point(value, t, higher) == want


def test_thresholds_may_name_only_warn_or_only_fail():
    assert _point(0.1, {"warn": 0.5}, True) == "warn" and _point(0.1, {"fail": 0.5}, True) == "fail"
    assert _point(0.9, {"fail": 0.5}, False) == "fail" and _point(0.1, {}, True) == "pass"


def test_a_bare_number_becomes_an_estimate_without_an_interval():
    assert as_estimate(0.3) == {"value": 0.3, "n": 0, "ci_low": None, "ci_high": None, "method": "none",
                                "note": "no interval"}
    e = stats.proportion(3, 4)
    assert as_estimate(e) is e and as_estimate(None) is None
    assert judge(stats.estimate(None, 0, method="wilson"), {"warn": 0.5}, True) == "n/a"


def test_an_interval_wholly_on_one_side_takes_that_sides_status():
    t = {"warn": 0.8, "fail": 0.5}
    assert judge(stats.estimate(0.6, 100, 0.55, 0.7, "wilson"), t, True) == "warn"
    assert judge(stats.estimate(0.3, 100, 0.2, 0.4, "wilson"), t, True) == "fail"
    assert judge(stats.estimate(0.6, 100, 0.45, 0.7, "wilson"), t, True) == "inconclusive"
    assert judge(stats.estimate(0.3, 100, 0.25, 0.35, "wilson"), {"warn": 0.2, "fail": 0.5}, False) == "warn"


def _faith(ins, dele, **kw):
    return {"faith_insertion_auc": ins, "faith_deletion_auc": dele, **kw}


def test_the_per_image_gap_is_insertion_minus_deletion_with_the_converged_mask():
    gap, ok = _per_image_gap(_faith([0.9, 0.5], [0.2, 0.6], converged=[True, False]))
    assert gap == pytest.approx([0.7, -0.1]) and ok.tolist() == [True, False]
    gap, ok = _per_image_gap(_faith([0.9], [0.2]))
    assert ok.tolist() == [True] and _per_image_gap({}) == (None, None)


def test_faithfulness_gain_leaves_out_unconverged_maps_and_says_how_many():
    n = 12
    mine = _faith(np.full(n, 0.8), np.full(n, 0.2), converged=[True] * 10 + [False] * 2)
    mine["faith_insertion_auc"][-2:] = -5.0  # the unconverged maps would drag the mean far down
    floor = _faith(np.full(n, 0.5), np.full(n, 0.4))
    est = faithfulness_gain({"explain": {"ig": mine, "random": floor}}, "ig")
    assert est["value"] == pytest.approx(0.5) and est["n"] == 10
    mine["converged"] = [1] * 10 + [0] * 2  # 0/1 as JSON stores them: still a mask, not indices
    assert faithfulness_gain({"explain": {"ig": mine, "random": floor}}, "ig")["n"] == 10
    assert est["note"] == "2 unconverged map(s) left out"
    assert faithfulness_gain({"explain": {"ig": mine}}, "ig") is None  # no random floor: no gain
    short = _faith(np.full(n - 1, 0.5), np.full(n - 1, 0.4))
    assert faithfulness_gain({"explain": {"ig": mine, "random": short}}, "ig") is None
    assert faithfulness_gain({"explain": {"ig": {}, "random": floor}}, "ig") is None


def test_faithfulness_gain_keeps_the_bootstraps_note_and_adds_its_own():
    mine = _faith(np.full(6, 0.8), np.full(6, 0.2), converged=[True] * 5 + [False])
    floor = _faith(np.full(6, 0.5), np.full(6, 0.4))
    est = faithfulness_gain({"explain": {"ig": mine, "random": floor}}, "ig")
    assert est["note"] == ("5 images: too few for an interval (at least 10); 1 unconverged map(s) left out")


def test_sanity_similarity_reads_the_last_cascade_stage_over_converged_maps():
    san = {"stages": [{"per_image": [0.9] * 12}, {"per_image": [0.5] * 12}, {"per_image": [0.1] * 10 + [0.9, 0.9]}],
           "converged": [True] * 10 + [False] * 2}
    est = sanity_similarity({"explain": {"ig": {"meta": {"sanity": san}}}}, "ig")
    assert est["value"] == pytest.approx(0.1) and est["n"] == 10
    san["converged"] = [1] * 10 + [0] * 2
    assert sanity_similarity({"explain": {"ig": {"meta": {"sanity": san}}}}, "ig")["n"] == 10
    del san["converged"]
    assert sanity_similarity({"explain": {"ig": {"meta": {"sanity": san}}}}, "ig")["n"] == 12
    assert sanity_similarity({"explain": {"ig": {"meta": {}}}}, "ig") is None


def test_road_gain_is_the_paired_difference_to_the_random_map_over_converged_maps():
    rng = np.random.default_rng(1)
    mine, floor = rng.uniform(0.3, 0.9, 14), rng.uniform(0.0, 0.5, 14)
    ok = np.array([True] * 12 + [False] * 2)
    method = {**_faith(np.full(14, 0.8), np.full(14, 0.2), converged=ok.tolist()), "road": mine.tolist()}
    results = {"explain": {"ig": method, "random": {"road": floor.tolist()}}, "seed": 3}
    est = road_gain(results, "ig")
    assert est == stats.paired_difference(mine[ok], floor[ok], seed=3) and est["n"] == 12
    assert est["value"] == pytest.approx((mine[ok] - floor[ok]).mean())
    del results["seed"]  # seed 0 by default: the bootstrap's interval is that of seed 0
    assert road_gain(results, "ig") == stats.paired_difference(mine[ok], floor[ok], seed=0)
    bare = {"explain": {"ig": {"road": mine.tolist()}, "random": {"road": floor.tolist()}}}  # no AUCs: every image
    assert road_gain(bare, "ig") == stats.paired_difference(mine, floor, seed=0)
    assert road_gain({"explain": {"ig": method, "random": {"road": floor[:-1].tolist()}}}, "ig") is None
    assert road_gain({"explain": {"ig": method, "random": {}}}, "ig") is None
    assert road_gain({"explain": {"ig": {k: v for k, v in method.items() if k != "road"},
                                  "random": {"road": floor.tolist()}}}, "ig") is None
    assert road_gain({"explain": {"ig": method}}, "ig") is None


def test_class_sensitivity_is_the_mean_rank_correlation_with_another_classs_map():
    per = np.random.default_rng(2).uniform(0.2, 0.9, 15)
    results = {"explain": {"ig": {"meta": {"random_logit": {"per_image": per.tolist()}}}}, "seed": 4}
    assert class_sensitivity(results, "ig") == stats.mean(per, seed=4)
    del results["seed"]
    est = class_sensitivity(results, "ig")
    assert est == stats.mean(per, seed=0) and est["value"] == pytest.approx(per.mean()) and est["n"] == 15
    assert class_sensitivity({"explain": {"ig": {"meta": {}}}}, "ig") is None


def test_accuracy_prefers_the_evaluations_own_interval():
    own = stats.proportion(30, 40)
    assert accuracy({"eval": {"accuracy_ci": own, "accuracy": 0.1, "n_test": 10}}) is own
    est = accuracy({"eval": {"accuracy": 0.75, "n_test": 40}})
    assert (est["value"], est["n"]) == (0.75, 40) and est["ci_low"] == pytest.approx(own["ci_low"])


def test_rotation_accuracy_averages_the_two_check_angles_only():
    r = {"robust": {"check_angle": 15, "invariance": {"rotate": {
        "severities": [-30, -15, 0, 14, 15, 16, 30], "accuracy": [0.1, 0.61, 0.9, 0.0, 0.8, 0.0, 0.2], "n": 50}}}}
    est = rotation_accuracy(r)
    assert est["value"] == pytest.approx(0.705) and est["n"] == 50  # the mean itself, not 35 / 50
    assert est["ci_low"] == pytest.approx(stats.proportion(35, 50)["ci_low"])
    r["robust"]["check_angle"] = 20
    assert rotation_accuracy(r) is None
    assert rotation_accuracy({"robust": {"invariance": {}}}) is None and rotation_accuracy({}) is None


def test_robust_accuracy_is_the_per_image_worst_case_over_attacks_at_the_check_epsilon():
    targets = [0, 1, 2, 0, 1]

    def attack(preds_by_eps, epsilons=(0.0, 0.03)):
        return {"preds": preds_by_eps, "targets": targets, "meta": {"epsilons": list(epsilons)}}

    arrays = {"failed": {"meta": {"epsilons": [0.03]}},  # no predictions: not counted
              "other_eps": attack([[9] * 5], epsilons=(0.1,)),  # not run at 0.03: not counted
              "fgsm": attack([targets, [0, 1, 0, 0, 0]]),  # fools images 2 and 4
              "pgd": attack([targets, [1, 1, 2, 0, 0]])}  # fools images 0 and 4
    est = robust_accuracy({"robust": {"check_epsilon": 0.03, "adversarial_arrays": arrays}})
    assert (est["value"], est["n"]) == (pytest.approx(0.4), 5) and est["note"] == "worst case over fgsm, pgd"
    assert robust_accuracy({"robust": {"check_epsilon": 0.05, "adversarial_arrays": arrays}}) is None
    assert robust_accuracy({}) is None


def test_robust_accuracy_from_gradient_free_attacks_alone_is_an_upper_bound_that_can_fail_but_never_pass():
    targets = [0, 1, 2, 0, 1] * 20

    def square(fooled: int):
        preds = list(targets)
        for i in range(fooled):
            preds[i] = (preds[i] + 1) % 3
        return {"square": {"preds": [targets, preds], "targets": targets, "meta": {"epsilons": [0.0, 0.03]}}}
    t = {"warn": 0.5, "fail": 0.3}
    robust = robust_accuracy({"robust": {"check_epsilon": 0.03, "adversarial_arrays": square(5)}})
    assert robust["value"] == pytest.approx(0.95) and robust["ci_low"] is None and robust["ci_high"] > 0.95
    assert robust["note"] == ("worst case over square alone: no white-box attack ran, so this is an upper bound (the "
                              "model may be less robust): it can fail, never pass")
    assert judge(robust, t, True) == "inconclusive"
    assert "upper bound" in settle(robust, t)
    fragile = robust_accuracy({"robust": {"check_epsilon": 0.03, "adversarial_arrays": square(90)}})
    assert fragile["ci_high"] < 0.3 and judge(fragile, t, True) == "fail"  # even its upper bound fails
    both = {**square(5), "fgsm": square(5)["square"]}  # a white-box attack ran too: an ordinary interval
    est = robust_accuracy({"robust": {"check_epsilon": 0.03, "adversarial_arrays": both}})
    assert est["ci_low"] is not None and judge(est, t, True) == "pass"


def test_ece_prefers_its_interval_and_is_none_without_calibration():
    ci = stats.estimate(0.05, 100, 0.03, 0.08, "bootstrap")
    assert ece({"robust": {"calibration": {"before": {"ece": 0.5, "ece_ci": ci}}}}) is ci
    assert ece({"robust": {"calibration": {"before": {"ece": 0.5}}}}) == 0.5
    assert ece({"robust": {"calibration": {}}}) is None and ece({}) is None


def test_settle_names_the_nearer_threshold_and_when_nothing_settles_it():
    t = {"warn": 0.8, "fail": 0.6}
    wide = stats.estimate(0.7, 20, 0.55, 0.85, "wilson")  # straddles both: 0.8 and 0.6 are 0.1 away
    near_fail = stats.estimate(0.62, 20, 0.5, 0.81, "wilson")
    assert "against 0.6" in settle(near_fail, t)
    assert settle(stats.estimate(0.9, 20, 0.85, 0.95, "wilson"), t) == ""
    assert settle(None, t) == ""
    assert settle(stats.estimate(0.8, 20, 0.7, 0.9, "wilson"), {"warn": 0.8}) == (
        "the value sits on the threshold 0.8; no sample size settles it")
    assert settle(stats.estimate(0.5, 3, method="bootstrap", note="3 images: too few"), t) == "3 images: too few"
    assert settle(stats.estimate(0.5, 3, method="bootstrap"), t) == "too few images for an interval"
    more = stats.more_images(wide, 0.8)
    assert settle(wide, {"warn": 0.8}) == f"about {more:,} more images would settle it against 0.8"
    assert settle(stats.estimate(0.72, 20, 0.55, 0.85, "wilson"), t).endswith("against 0.8")


def test_intervals_are_drawn_with_the_runs_seed():
    rng = np.random.default_rng(0)
    ins, dele = rng.uniform(0.5, 0.9, 30), rng.uniform(0.1, 0.5, 30)
    explain = {"ig": _faith(ins, dele) | {"meta": {"sanity": {"stages": [{"per_image": ins.tolist()}]}}},
               "random": _faith(np.full(30, 0.5), rng.uniform(0.3, 0.5, 30))}
    floor = explain["random"]["faith_insertion_auc"] - explain["random"]["faith_deletion_auc"]
    for seed in (0, 7):
        r = {"explain": explain} if seed == 0 else {"explain": explain, "seed": seed}  # no seed key: seed 0
        assert faithfulness_gain(r, "ig") == stats.paired_difference(ins - dele, floor, seed=seed)
        assert sanity_similarity(r, "ig") == stats.mean(ins, seed=seed)
    assert faithfulness_gain({"explain": explain, "seed": 1}, "ig") != faithfulness_gain({"explain": explain}, "ig")
    assert sanity_similarity({"explain": explain, "seed": 1}, "ig") != sanity_similarity({"explain": explain}, "ig")


def test_per_method_checks_without_attributions_give_no_verdicts():
    assert run_checks({"eval": {"accuracy": 0.9, "n_test": 100}}, {"faithfulness_gain": {"warn": 0.1}}) == []


def _results(degenerate=False):
    meta = lambda label, ok=True: {"label": label, "applicable": ok}  # noqa: E731
    explain = {"gradcam": _faith(np.full(12, 0.9), np.full(12, 0.1)) | {"meta": meta("Grad-CAM")},
               "lime": {"meta": meta("LIME", ok=False)},
               "random": _faith(np.full(12, 0.5), np.full(12, 0.5)) | {"meta": meta("Random")}}
    ev = {"accuracy": 0.75, "n_test": 400, "gain_over_baseline": -0.02}
    if degenerate:
        ev["degenerate"] = {"is": True, "why": "predicts one class"}
    return {"eval": ev, "explain": explain}


def test_run_checks_writes_one_verdict_per_check_and_applicable_method():
    th = {"accuracy": {"warn": 0.8, "fail": 0.5}, "faithfulness_gain": {"warn": 0.1, "fail": 0.0}}
    v = run_checks(_results(), th)
    assert [x["name"] for x in v] == ["accuracy", "faithfulness_gain:gradcam"]  # no random, no inapplicable LIME
    acc = stats.proportion(300, 400)
    assert v[0] == {"name": "accuracy", "check": "accuracy", "method": None, "label": "Test accuracy",
                    "category": "performance", "higher_is_better": True, "description": CHECKS["accuracy"].description,
                    "value": 0.75, "n": 400, "ci_low": acc["ci_low"], "ci_high": acc["ci_high"], "interval": "wilson",
                    "note": "", "warn": 0.8, "fail": 0.5, "status": "warn", "settle": "",
                    "action": CHECKS["accuracy"].action, "sized_by": "the test split", "stage": None}
    g = run_checks(_results(), {"gain_over_baseline": {"warn": 0.05, "fail": 0.0}})[0]
    assert g["status"] == "fail" and g["interval"] == "none" and g["note"] == "no interval" and g["settle"] == ""
    f = v[1]
    assert (f["check"], f["method"], f["label"], f["status"]) == (
        "faithfulness_gain", "gradcam", "Grad-CAM: faithfulness beyond a random map", "pass")
    assert f["value"] == pytest.approx(0.8) and f["interval"] == "bootstrap"


def test_run_checks_says_what_would_settle_an_inconclusive_verdict_and_nothing_otherwise():
    r = _results()
    r["eval"]["n_test"] = 20
    v = run_checks(r, {"accuracy": {"warn": 0.8, "fail": 0.5}})[0]
    assert v["status"] == "inconclusive" and v["settle"] == settle(stats.proportion(15, 20), {"warn": 0.8, "fail": 0.5})
    assert v["settle"].startswith("about ")


def test_a_degenerate_model_is_scored_on_accuracy_and_gain_only():
    th = {"accuracy": {"warn": 0.8, "fail": 0.5}, "gain_over_baseline": {"warn": 0.05, "fail": 0.0},
          "faithfulness_gain": {"warn": 0.1, "fail": 0.0}, "ece": {"warn": 0.1}}
    v = {x["name"]: x for x in run_checks(_results(degenerate=True), th)}
    assert v["accuracy"]["status"] == "warn" and v["gain_over_baseline"]["status"] == "fail"
    f = v["faithfulness_gain:gradcam"]
    assert f["status"] == "n/a" and f["note"] == "not scored: the model is degenerate (predicts one class)"
    assert f["value"] == pytest.approx(0.8)  # the number is kept, only not judged
    assert v["ece"]["status"] == "n/a" and v["ece"]["value"] is None and v["ece"]["note"] == ""


def test_overall_is_the_worst_status_and_pass_when_there_is_none():
    assert overall([]) == "pass"
    for worst, statuses in (("inconclusive", ["pass", "inconclusive", "n/a"]), ("warn", ["inconclusive", "warn"]),
                            ("fail", ["fail", "warn"])):
        assert overall([{"status": s} for s in statuses]) == worst


@pytest.mark.parametrize("faithful, sane, value, sentence", [
    ("n/a", "n/a", None, "IG was not checked."),
    ("inconclusive", "pass", None, "IG: too few audit images to judge its faithfulness check (the interval straddles "
     "a threshold); raise audit.max_images or explain.trust.sanity_images."),
    ("inconclusive", "inconclusive", None, "IG: too few audit images to judge its faithfulness and parameter randomisation "
     "check (the interval straddles a threshold); raise audit.max_images or explain.trust.sanity_images."),
    ("pass", "pass", 0.123, "IG passes both checks: its maps beat a random map and change when the model is "
     "randomised (rank correlation 0.12 with every layer re-initialised)."),
    ("pass", "fail", 0.9, "IG passes its input but not its model: it fails the parameter-randomisation check (rank "
     "correlation 0.90 with every layer re-initialised), so its maps show the image more than what the network "
     "learned."),
    ("fail", "pass", None, "IG depends on the model but is not faithful: removing its top pixels hurts the "
     "prediction hardly more than removing random ones."),
    ("warn", "warn", None, "IG is not reliable here: it does not clearly beat a random map, and it only just "
     "passes the parameter-randomisation check."),
    ("pass", "n/a", None, "IG beats a random map; its parameter-randomisation check was not run."),
    ("n/a", "pass", 0.2, "IG: its faithfulness was not checked, and it passes the parameter-randomisation check (rank "
     "correlation 0.20 with every layer re-initialised)."),
    ("n/a", "fail", None, "IG: its faithfulness was not checked, and it fails the parameter-randomisation check."),
    ("pass", "warn", None, "IG passes its input but not its model: it only just passes the parameter-randomisation check, so "
     "its maps show the image more than what the network learned."),
    ("fail", "n/a", None, "IG is not reliable here: it does not clearly beat a random map, and it was not run for "
     "the parameter-randomisation check."),
])
def test_each_pair_of_method_verdicts_reads_as_one_sentence(faithful, sane, value, sentence):
    assert method_sentence("IG", faithful, sane, value) == sentence


def _shortcut_meta(**over):
    gain = stats.estimate(0.35, 40, 0.2, 0.5, method="paired")
    region = {"class": "Shirt", "kind": "region", "cluster": 1, "size": 12, "shape": "compact", "area": 0.05,
              "paste": {"value": 0.4}, "control_paste": {"value": 0.05}, "gain": gain}
    return {"n": 60, "n_classes_analysed": 3, "method": "lrp", "flagged": [region], **over}


def test_the_shortcut_verdict_says_what_it_searched_and_what_the_worst_suspect_did():
    from cvaudit.report.shortcut_checks import shortcut_suspected
    said = lambda **over: shortcut_suspected({"clever_hans": {"meta": _shortcut_meta(**over)}})  # noqa: E731
    est = said()
    assert est["value"] == 0.35 and est["n"] == 40 and est["method"] == "paired"
    assert est["note"] == "Shirt, cluster 1 (12 images): compact region, 5% of the image: flips 40%, its control 5%"
    prop = {**_shortcut_meta()["flagged"][0], "kind": "property", "shape": "brightness"}
    assert said(flagged=[prop])["note"] == "Shirt: brightness shifted to the class's mean: flips 40%, its control 5%"
    empty = {**prop, "paste": {"value": None}}
    assert said(flagged=[empty])["note"] == "Shirt: brightness shifted to the class's mean: no image to paste into"
    # nothing suspect: 0, with what was searched, the global properties named where they were searched
    spray = "SpRAy over 3 classes (60 test images, lrp maps: compact regions, edge strips, the border)"
    nothing = said(flagged=[])
    assert (nothing["value"], nothing["n"], nothing["method"]) == (0.0, 60, "none")
    assert nothing["note"] == f"no suspect found; searched: {spray}"
    glob = {"searched": True, "properties": ["brightness", "contrast"], "n_train": 500}
    assert said(flagged=[], **{"global": glob})["note"] == (
        f"no suspect found; searched: {spray}; global properties (brightness, contrast) of 500 training images")
    assert said(flagged=[], **{"global": {**glob, "searched": False}})["note"] == f"no suspect found; searched: {spray}"
    # no class could be clustered: a pass only if the global properties were searched, else no verdict
    only_global = said(flagged=[], n_classes_analysed=0, **{"global": glob})
    assert only_global["value"] == 0.0 and "global properties (brightness, contrast)" in only_global["note"]
    none = said(flagged=[], n_classes_analysed=0, **{"global": {**glob, "searched": False}})
    assert none["value"] is None and none["n"] == 60 and none["method"] == "none"
    assert none["note"] == "no predicted class had enough test images to cluster (clever_hans.min_class_images)"
    assert shortcut_suspected({}) is None


def test_coverage_is_the_test_coverage_minus_its_promise_with_the_interval_shifted_alike():
    cov = stats.proportion(85, 100)
    conf = {"coverage": cov, "level": 0.9, "score": "aps", "mean_size": 1.234, "worst_class": {"class": "cat", "coverage": 0.7}}
    est = coverage({"robust": {"calibration": {"conformal": conf}}})
    assert est["value"] == pytest.approx(-0.05) and est["n"] == 100 and est["method"] == cov["method"]
    assert est["ci_low"] == pytest.approx(cov["ci_low"] - 0.9) and est["ci_high"] == pytest.approx(cov["ci_high"] - 0.9)
    assert est["note"] == "coverage 0.850 of a promised 0.9 (aps sets, mean size 1.23); worst class cat: 0.700"
    open_below = {**conf, "coverage": {**cov, "ci_low": None}, "worst_class": None}
    est = coverage({"robust": {"calibration": {"conformal": open_below}}})
    assert est["ci_low"] is None and est["note"].endswith("worst class None: nan")
    assert coverage({"robust": {"calibration": {"conformal": {**conf, "coverage": None}}}}) is None
    assert coverage({"robust": {"calibration": {}}}) is None and coverage({}) is None


def test_the_gap_checks_take_the_largest_gap_and_nothing_without_one():
    small, large = stats.estimate(0.05, 40, 0.0, 0.1, "newcombe"), stats.estimate(0.2, 30, 0.1, 0.3, "newcombe")
    groups = {"site": {"gap": small}, "scanner": {"gap": large}, "sex": {"gap": None}}
    assert group_gap({"robust": {"slices": {"groups": groups}}}) == large
    assert group_gap({"robust": {"slices": {"groups": {"sex": {}}}}}) is None
    assert group_gap({"robust": {"slices": {}}}) is None and group_gap({}) is None
    sets = {"catalogue": {"gap": small}, "photos": {"gap": large}, "empty": {}}
    assert shift_gap({"robust": {"shift": {"sets": sets}}}) == large
    assert shift_gap({"robust": {"shift": {"sets": {"empty": {}}}}}) is None and shift_gap({"robust": {"shift": {}}}) is None
    assert shift_gap({}) is None
    assert slice_gap({"robust": {"slices": {"weak_slices": {"worst": large}}}}) == large
    assert slice_gap({"robust": {"slices": {"groups": groups}}}) is None and slice_gap({}) is None


def test_mce_says_why_it_has_no_value_and_shape_bias_reads_the_cue_conflict():
    m = stats.estimate(1.3, 48, 1.1, 1.6, "bootstrap")
    errors = {"mce": m, "mean_error": {"n": 48}, "note": ""}
    assert mce({"robust": {"corruptions": {"errors": errors}}}) == m
    why = mce({"robust": {"corruptions": {"errors": {**errors, "mce": None, "note": "the reference ran at 64 px"}}}})
    assert why == stats.estimate(None, 48, method="none", note="the reference ran at 64 px")
    bare = mce({"robust": {"corruptions": {"errors": {**errors, "mce": None, "note": ""}}}})
    assert bare["note"] == "no mCE" and bare["value"] is None and bare["n"] == 48
    assert mce({"robust": {}}) is None and mce({}) is None
    bias = stats.proportion(30, 40)
    assert shape_bias({"robust": {"shape_texture": {"meta": {"cue_conflict": {"shape_bias": bias}}}}}) == bias
    assert shape_bias({"robust": {}}) is None
