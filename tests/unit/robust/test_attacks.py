"""Attacks with known answers, in seconds. On a linear model the smallest L-inf perturbation that
changes the prediction is known in closed form: image i of true class y crosses to class j at
eps = (z_y - z_j) / ||w_y - w_j||_1. So at a given eps the set of images a perfect attack fools is known,
and an attack that is weaker (or a cascade that drops a stage, or an eps that is off) misses some of it."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.robust.adversarial import ATTACKS, _batch_seed, attack_batch, masking_checks

OPTS = {"pgd": {"steps": 10, "restarts": 2}, "check_epsilon": 0.05,
        "autoattack": {"steps": 20, "restarts": 1, "target_classes": 3, "square_queries": 200},
        "masking": {"large_epsilon": 0.3, "max_accuracy": 0.05, "tolerance": 0.02, "more_steps": 3}}


def _linear(classes: int, seed: int = 0, n: int = 120):
    """A linear classifier on 3x4x4 images around grey (so eps <= 0.1 never clips), its images, their true
    classes (its own clean predictions: every image starts right) and each image's distance to the nearest
    decision boundary in L-inf."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, classes)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(classes, 48, generator=g))
        net[1].bias.zero_()
    for p in net.parameters():
        p.requires_grad_(False)
    x = 0.5 + 0.3 * (torch.rand(n, 3, 4, 4, generator=g) - 0.5) * 0.5
    with torch.no_grad():
        z = net(x)
    y = z.argmax(1)
    w = net[1].weight
    dist = torch.stack([torch.stack([(z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).abs().sum() if j != y[i]
                                     else torch.tensor(math.inf) for j in range(classes)]).min() for i in range(n)])
    return net, x, y, dist


def _fooled(net, adv, y):
    with torch.no_grad():
        return net(adv).argmax(1) != y


def _clear(dist, eps, margin=0.15):
    """Images whose distance is not within 15% of eps: a perfect attack fools those below, none above."""
    return (dist < eps * (1 - margin)) | (dist > eps * (1 + margin))


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "autoattack"])
def test_on_a_two_class_linear_model_each_attack_fools_exactly_the_images_within_eps(attack):
    net, x, y, dist = _linear(2)
    eps = float(dist.median())  # about half the images are within reach
    adv, _ = attack_batch(attack, net, x, y, eps, OPTS, seed=1)
    assert (adv - x).abs().max() <= eps + 1e-6
    fooled, should = _fooled(net, adv, y), dist < eps
    clear = _clear(dist, eps)
    assert 30 < int(should.sum()) < 90 and clear.sum() >= 40
    assert torch.equal(fooled[clear], should[clear]), (attack, int((fooled[clear] != should[clear]).sum()))


def test_on_a_four_class_linear_model_the_strongest_attack_finds_every_reachable_image():
    net, x, y, dist = _linear(4, seed=2)
    eps = float(dist.quantile(0.6))
    clear = _clear(dist, eps)
    should = dist < eps
    adv, parts = attack_batch("autoattack", net, x, y, eps, OPTS, seed=1)
    assert torch.equal(_fooled(net, adv, y)[clear], should[clear])
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert clear.sum() >= 40 and 20 < int(should[clear].sum()) < int(clear.sum()) - 10
    # each cascade stage is attempted only on the images still right: their hits never overlap
    assert not (parts["apgd_ce"] & parts["apgd_t"]).any() and not (parts["apgd_t"] & parts["square"]).any()
    assert not (parts["apgd_ce"] & parts["square"]).any()
    assert parts["apgd_ce"].sum() > 0
    # what the ensemble fooled is what its parts fooled (FGSM included: the per-image worst case)
    union = parts["fgsm"] | parts["apgd_ce"] | parts["apgd_t"] | parts["square"]
    assert np.array_equal(union, _fooled(net, adv, y).numpy())


def test_the_cascade_attacks_only_images_still_right_and_keeps_the_others_unchanged():
    net, x, y, dist = _linear(4, seed=3)
    wrong_label = (y + 1) % 4  # labels the model gets wrong: no attack needed, the image is left as it is
    y2 = y.clone()
    y2[:10] = wrong_label[:10]
    adv, parts = attack_batch("autoattack", net, x, y2, float(dist.median()), OPTS, seed=0)
    assert torch.equal(adv[:10], x[:10])
    assert not any(parts[c][:10].any() for c in ("apgd_ce", "apgd_t", "square"))


def test_the_targeted_stage_needs_four_classes_and_is_recorded_as_no_hits_below():
    net, x, y, dist = _linear(3, seed=4)
    eps = float(dist.quantile(0.7))
    adv, parts = attack_batch("autoattack", net, x, y, eps, OPTS, seed=0)
    assert set(parts) == {"fgsm", "apgd_ce", "apgd_t", "square"} and not parts["apgd_t"].any()
    clear = _clear(dist, eps)
    assert torch.equal(_fooled(net, adv, y)[clear], (dist < eps)[clear])


def test_fgsm_is_kept_where_it_alone_fools_an_image(monkeypatch):
    """The worst case over the ensemble includes FGSM: if the cascade misses an image FGSM fooled, the FGSM
    image is the adversarial one."""
    import torchattacks
    net, x, y, dist = _linear(4, seed=5)

    class Nothing:  # an attack that never moves the image
        def __init__(self, *a, **k):
            pass

        def __call__(self, xs, ys):
            return xs.clone()
    for name in ("APGD", "APGDT", "Square"):
        monkeypatch.setattr(torchattacks, name, Nothing)
    eps = float(dist.quantile(0.6))
    adv, parts = attack_batch("autoattack", net, x, y, eps, OPTS, seed=0)
    assert parts["fgsm"].sum() > 0 and not parts["apgd_ce"].any()
    assert np.array_equal(_fooled(net, adv, y).numpy(), parts["fgsm"])
    single, _ = attack_batch("fgsm", net, x, y, eps, OPTS)
    assert torch.equal(adv[parts["fgsm"]], single[parts["fgsm"]]) and torch.equal(adv[~parts["fgsm"]], x[~parts["fgsm"]])


def test_pgd_keeps_the_first_fooling_restart_and_attacks_only_the_survivors(monkeypatch):
    import torchattacks
    calls = []

    class Recording(torchattacks.PGD):
        def __init__(self, model, eps, alpha, steps, random_start):
            calls.append({"eps": eps, "alpha": alpha, "steps": steps, "random_start": random_start})
            super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)

        def __call__(self, xs, ys):
            calls[-1].setdefault("sizes", []).append(len(xs))
            return super().__call__(xs, ys)
    monkeypatch.setattr(torchattacks, "PGD", Recording)
    net, x, y, dist = _linear(2, seed=6)
    eps = float(dist.median())
    opts = {**OPTS, "pgd": {"steps": 4, "restarts": 3}}
    adv, _ = attack_batch("pgd", net, x, y, eps, opts, seed=2)
    c = calls[0]
    assert (c["eps"], c["steps"], c["random_start"]) == (eps, 4, True) and c["alpha"] == pytest.approx(2.5 * eps / 4)
    sizes = c["sizes"]
    assert len(sizes) == 3 and sizes[0] == len(x) and sizes[1] < sizes[0]  # the fooled ones are not attacked again
    assert all(b <= a for a, b in zip(sizes, sizes[1:]))
    assert int(_fooled(net, adv, y).sum()) >= len(x) - sizes[1]  # a fooling restart's image is kept
    again, _ = attack_batch("pgd", net, x, y, eps, opts, seed=2)
    assert torch.equal(adv, again)  # seeded
    everyone = {**opts, "pgd": {"steps": 4, "restarts": 1}}
    calls.clear()
    attack_batch("pgd", net, x, y, 1.0, everyone, seed=2)
    assert len(calls[0]["sizes"]) == 1


def test_eps_zero_and_no_images_are_no_attack_and_unknown_attacks_are_named():
    net, x, y, _ = _linear(2)
    for attack in ATTACKS:
        adv, parts = attack_batch(attack, net, x, y, 0.0, OPTS)
        assert torch.equal(adv, x) and adv is not x and parts == {}
        adv, parts = attack_batch(attack, net, x[:0], y[:0], 0.1, OPTS)
        assert adv.shape == (0, 3, 4, 4) and parts == {}
    with pytest.raises(CvauditError, match=r"unknown attack 'cw' \(config key robustness.adversarial.attacks\); "
                                           r"available: fgsm, pgd, autoattack"):
        attack_batch("cw", net, x, y, 0.1, OPTS)


def test_a_batchs_seed_depends_on_the_run_seed_and_the_batchs_first_image_only():
    assert _batch_seed(0, 0) == 0 and _batch_seed(0, 64) == 64 and _batch_seed(1, 0) == 1_000_003
    assert _batch_seed(3, 5) == 3_000_014 and _batch_seed(5000, 7) == (5000 * 1_000_003 + 7) % 2 ** 31
    assert _batch_seed(5000, 7) < 2 ** 31


def _arrays(n=100, eps=(0.0, 0.05), **hits):
    z = np.zeros((len(eps), n), bool)
    a = {"epsilons": list(eps), "targets": np.zeros(n, int), "clean_pred": np.zeros(n, int),
         "large_correct": np.zeros(n, bool), "more_steps_fooled": np.zeros(n, bool),
         **{f"hit_{c}": z.copy() for c in ("fgsm", "apgd_ce", "apgd_t", "square")}}
    a.update(hits)
    return a


def _checks(arrays, **masking):
    opts = {**OPTS, "masking": {**OPTS["masking"], **masking}}
    return {c["name"]: c for c in masking_checks(arrays, opts)}


def test_masking_checks_pass_a_clean_record_and_name_each_line():
    c = _checks(_arrays())
    assert list(c) == ["large_epsilon", "iterative_not_weaker", "gradient_free_not_stronger", "more_steps_little_gain"]
    assert all(v["passed"] for v in c.values())
    assert c["large_epsilon"]["label"] == "White-box accuracy reaches about 0 at eps = 0.3"
    assert c["large_epsilon"]["detail"] == "APGD-CE leaves 0 of 100 images right (allowed: 5%)"
    assert c["iterative_not_weaker"]["detail"] == "images FGSM fooled but APGD-CE did not, per eps: 0: 0, 0.05: 0 (allowed: 2)"
    assert c["gradient_free_not_stronger"]["detail"] == (
        "images only Square fooled (after APGD-CE and APGD-T), per eps: 0: 0, 0.05: 0 (allowed: 2)")
    assert c["more_steps_little_gain"]["label"] == "3x more steps do not help much"
    assert c["iterative_not_weaker"]["label"] == "The iterative attack is never weaker than the single-step one"
    assert c["gradient_free_not_stronger"]["label"] == "The gradient-free attack is never stronger than the white-box ones"
    assert c["more_steps_little_gain"]["detail"] == "APGD-CE with 3x the steps fools 0 more image(s) at eps = 0.05 (allowed: 2)"


def test_the_large_epsilon_check_fails_above_the_allowed_share_and_says_why():
    lc = np.zeros(100, bool)
    lc[:5] = True
    at = _checks(_arrays(large_correct=lc))["large_epsilon"]
    assert at["passed"] and at["detail"] == "APGD-CE leaves 5 of 100 images right (allowed: 5%)"  # 5% is allowed
    lc[5] = True
    c = _checks(_arrays(large_correct=lc))["large_epsilon"]
    assert not c["passed"] and c["detail"] == ("APGD-CE leaves 6 of 100 images right (allowed: 5%); its gradients do "
                                               "not lead anywhere: masked, or too few steps")
    empty = _checks(_arrays(n=0, eps=()))["large_epsilon"]
    assert not empty["passed"] and empty["detail"] == "APGD-CE leaves 0 of 0 images right (allowed: 5%)"  # no images


def test_fgsm_beating_apgd_counts_only_images_the_model_had_right_within_the_tolerance():
    n = 100
    fgsm, apgd = np.zeros((2, n), bool), np.zeros((2, n), bool)
    fgsm[1, :3] = True  # FGSM fooled 3 images APGD-CE did not: more than 2% of 100
    a = _arrays(hit_fgsm=fgsm, hit_apgd_ce=apgd)
    c = _checks(a)["iterative_not_weaker"]
    assert not c["passed"] and "0.05: 3 (allowed: 2)" in c["detail"]
    apgd[1, 0] = True  # APGD-CE also fooled one of them: 2 left, allowed
    assert _checks(a)["iterative_not_weaker"]["passed"]
    a["clean_pred"] = a["clean_pred"].copy()
    a["clean_pred"][:3] = 1  # images already wrong do not count
    apgd[1, 0] = False
    assert _checks(a)["iterative_not_weaker"]["passed"]


def test_square_fooling_more_than_the_tolerance_fails_and_the_tolerance_is_at_least_one_image():
    sq = np.zeros((2, 10), bool)
    sq[0, 0] = True
    assert _checks(_arrays(n=10, hit_square=sq))["gradient_free_not_stronger"]["passed"]  # 2% of 10 rounds up to 1
    sq[1, :2] = True
    c = _checks(_arrays(n=10, hit_square=sq))["gradient_free_not_stronger"]
    assert not c["passed"] and c["detail"].endswith("0: 1, 0.05: 2 (allowed: 1)")
    assert _checks(_arrays(n=10, hit_square=sq), tolerance=0.2)["gradient_free_not_stronger"]["passed"]


def test_more_steps_count_only_new_images_the_model_had_right_at_the_check_epsilon():
    n = 100
    more, apgd = np.zeros(n, bool), np.zeros((2, n), bool)
    more[:5] = True
    apgd[1, :2] = True  # two of them the usual APGD-CE already fooled at check_epsilon
    a = _arrays(more_steps_fooled=more, hit_apgd_ce=apgd)
    c = _checks(a)["more_steps_little_gain"]
    assert not c["passed"] and c["detail"] == (
        "APGD-CE with 3x the steps fools 3 more image(s) at eps = 0.05 (allowed: 2); the attack has not converged: "
        "raise robustness.adversarial.autoattack.steps before trusting the robust accuracy")
    apgd[0, 2] = True  # fooled at another eps: still new at check_epsilon
    assert not _checks(a)["more_steps_little_gain"]["passed"]
    apgd[1, 2] = True
    c = _checks(a)["more_steps_little_gain"]
    assert c["passed"] and c["detail"] == "APGD-CE with 3x the steps fools 2 more image(s) at eps = 0.05 (allowed: 2)"
    a["epsilons"] = [0.0, 0.1]  # check_epsilon not among those run: no such line
    assert "more_steps_little_gain" not in _checks(a)


def _recording(monkeypatch):
    """Each torchattacks attack the code builds, with every argument resolved (defaults included)."""
    import inspect

    import torchattacks
    built = []
    for name in ("FGSM", "PGD", "APGD", "APGDT", "Square"):
        real = getattr(torchattacks, name)

        def make(*args, real=real, **kwargs):
            bound = inspect.signature(real.__init__).bind(None, *args, **kwargs)
            bound.apply_defaults()
            built.append((real.__name__, {k: v for k, v in bound.arguments.items() if k not in ("self", "model")}))
            return real(*args, **kwargs)
        monkeypatch.setattr(torchattacks, name, make)
    return built


def test_each_attack_is_built_as_the_config_says(monkeypatch):
    built = _recording(monkeypatch)
    net, x, y, dist = _linear(4, seed=7)
    eps = round(float(dist.quantile(0.3)), 4)  # some images out of reach: every stage of the cascade runs
    opts = {**OPTS, "autoattack": {"steps": 7, "restarts": 2, "target_classes": 9, "square_queries": 55}}
    attack_batch("autoattack", net, x, y, eps, opts, seed=5)
    got = dict(built)
    assert got["FGSM"] == {"eps": eps}
    common = {"norm": "Linf", "eps": eps, "steps": 7, "n_restarts": 2, "seed": 5, "eot_iter": 1, "rho": 0.75,
              "verbose": False}
    assert got["APGD"] == {**common, "loss": "ce"}
    assert got["APGDT"] == {**common, "n_classes": 4}  # 9 target classes asked, 3 other classes exist
    assert got["Square"] == {"norm": "Linf", "eps": eps, "n_queries": 55, "n_restarts": 1, "p_init": 0.8,
                             "loss": "margin", "resc_schedule": True, "seed": 5, "verbose": False}
    built.clear()
    attack_batch("autoattack", net, x, y, eps, {**opts, "autoattack": {**opts["autoattack"], "target_classes": 1}}, 5)
    assert dict(built)["APGDT"]["n_classes"] == 2  # one target class: the runner-up
    built.clear()
    attack_batch("autoattack", net, x, y, eps, {**opts, "autoattack": {**opts["autoattack"], "target_classes": 2}}, 5)
    assert dict(built)["APGDT"]["n_classes"] == 3
    built.clear()
    attack_batch("pgd", net, x, y, eps, {**opts, "pgd": {"steps": 8, "restarts": 1}}, 5)
    assert built == [("PGD", {"eps": eps, "alpha": pytest.approx(2.5 * eps / 8), "steps": 8, "random_start": True})]


def test_with_three_classes_the_cascade_still_runs_apgd_and_square():
    net, x, y, dist = _linear(3, seed=4)
    _, parts = attack_batch("autoattack", net, x, y, float(dist.quantile(0.7)), {
        **OPTS, "autoattack": {**OPTS["autoattack"]}}, seed=0)
    assert parts["apgd_ce"].sum() > 0


def test_pgd_seeds_each_restart_and_stops_once_every_image_is_fooled(monkeypatch):
    seeds = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: seeds.append(s) or real(s))
    net, x, y, dist = _linear(2, seed=6)
    opts = {**OPTS, "pgd": {"steps": 3, "restarts": 3}}
    attack_batch("pgd", net, x, y, float(dist.quantile(0.5)), opts, seed=2)
    assert seeds[:2] == [2 * 7919, 2 * 7919 + 1]
    seeds.clear()
    adv, _ = attack_batch("pgd", net, x, y, 1.0, opts, seed=2)  # eps 1: the first restart fools them all
    assert seeds == [2 * 7919] and _fooled(net, adv, y).all()


def test_the_default_seed_is_zero(monkeypatch):
    built = _recording(monkeypatch)
    net, x, y, dist = _linear(4, seed=7)
    attack_batch("autoattack", net, x, y, round(float(dist.quantile(0.3)), 4), OPTS)
    assert dict(built)["APGD"]["seed"] == 0 and dict(built)["Square"]["seed"] == 0


def test_batch_seeds_wrap_at_two_to_the_31():
    assert _batch_seed(3000, 7) == (3000 * 1_000_003 + 7) - 2 ** 31  # between 2^31 and 2^32: wraps once
