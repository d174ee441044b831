"""Known answers for the invariance stage's transforms and scores: each family against a direct
computation of what it promises, so a wrong sign, size or seed shows."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cvaudit import CvauditError
from cvaudit.robust.invariance import IDENTITY, equivariance_error, robustness_score, transform


def _dot(h=20, w=20, y=5, x=7):
    img = torch.zeros(1, 3, h, w)
    img[..., y, x] = 1
    return img


def test_each_family_is_its_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(transform("brightness", x, 0.5), (x * 0.5).clamp(0, 1))
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2)).view(-1, 1, 1, 1)
    assert torch.allclose(transform("contrast", x, 0.3), (grey + 0.3 * (x - grey)).clamp(0, 1), atol=2e-4)
    assert torch.equal(transform("blur", x, 1.0), TF.gaussian_blur(x, [7, 7], [1.0, 1.0]))  # 2 * ceil(3 sigma) + 1
    assert torch.equal(transform("blur", x, 0.4), TF.gaussian_blur(x, [5, 5], [0.4, 0.4]))
    assert torch.equal(transform("rotate", x, 30), TF.rotate(x, 30.0, interpolation=TF.InterpolationMode.BILINEAR))
    assert torch.equal(transform("scale", x, 0.5), TF.affine(x, angle=0.0, translate=[0, 0], scale=0.5, shear=[0.0, 0.0],
                                                            interpolation=TF.InterpolationMode.BILINEAR))


def test_rotation_is_counterclockwise_in_degrees_and_scale_zooms_about_the_centre():
    y = transform("rotate", _dot(21, 21, 5, 10), 90)  # a dot above the centre goes to the left of it
    assert tuple(torch.nonzero(y[0, 0] > 0.5)[0].tolist()) == (10, 5)
    sq = torch.zeros(1, 3, 20, 20)
    sq[..., 5:15, 5:15] = 1
    small = transform("scale", sq, 0.5)
    assert small[0, 0, 10, 10] == 1 and small[0, 0, 6, 6] == 0 and 20 < float(small[0, 0].sum()) < 30


def test_translation_moves_right_and_down_by_the_rounded_fraction():
    y = transform("translate", _dot(), 0.12)  # 2.4 px rounds to 2
    assert y[0, 0, 7, 9] == 1 and y.sum() == 3
    z = transform("translate", _dot(), -0.1)
    assert z[0, 0, 3, 5] == 1


def test_noise_is_seeded_per_image_and_clipped():
    x = torch.full((3, 3, 8, 8), 0.5)
    y = transform("noise", x, 0.1, seeds=[11, 12, 13])
    for i, k in enumerate((11, 12, 13)):
        want = (0.5 + 0.1 * torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(k))).clamp(0, 1)
        assert torch.equal(y[i], want)
    alone = transform("noise", x[1:2], 0.1, seeds=[12])
    assert torch.equal(alone[0], y[1])  # an image's noise does not depend on its batch
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(transform("noise", x, 0.1, g1), (x + 0.1 * torch.randn(x.shape, generator=g2)).clamp(0, 1))
    assert float(transform("noise", x, 5.0, seeds=[1, 2, 3]).max()) == 1.0 and float(
        transform("noise", x, 5.0, seeds=[1, 2, 3]).min()) == 0.0
    assert transform("noise", x[:0], 0.1, seeds=[]).shape == (0, 3, 8, 8)


def _pillow_jpeg(x, quality):
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for im in u8:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def test_jpeg_is_pillows_round_trip_at_the_quality_and_100_is_the_ceiling():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(transform("jpeg", x, 20), _pillow_jpeg(x, 20))
    assert torch.equal(transform("jpeg", x, 150), _pillow_jpeg(x, 100))  # a quality above 100 is 100
    assert not torch.equal(transform("jpeg", x, 150), x)


def test_identity_returns_the_batch_itself_and_an_unknown_family_is_named():
    x = torch.rand(1, 3, 8, 8)
    for family, identity in IDENTITY.items():
        assert transform(family, x, identity) is x
    with pytest.raises(CvauditError, match=r"unknown transform family 'warp' \(config key robustness.invariance\)"
                                           r"; available: translate, rotate, scale, brightness, contrast, noise, blur, jpeg$"):
        transform("warp", x, 1.0)


def test_the_robustness_score_is_relative_to_clean_accuracy_over_the_distance_from_identity():
    assert robustness_score([0, 1], [0.5, 0.5], 0.0, 0) is None  # no clean accuracy: no score
    assert robustness_score([1.0], [0.4], 0.8, 1.0) == pytest.approx(0.5)  # one point: its accuracy / clean
    assert robustness_score([1.0, 1.0], [0.4, 0.6], 0.8, 1.0) == pytest.approx(0.625)
    # scale: identity 1; distances 0.5 and 1 (0.5 and 2.0 are not the same distance)
    assert robustness_score([0.5, 1.0, 2.0], [0.4, 0.8, 0.2], 0.8, 1.0) == pytest.approx(
        np.trapezoid([0.8, 0.4, 0.2], [0, 0.5, 1.0]) / (0.8 * 1.0))
    # a curve that does not start at the identity: the area over its own range
    assert robustness_score([2, 4], [0.8, 0.4], 0.8, 0) == pytest.approx(0.75)
    assert robustness_score([0, 10], [0.8, 0.8], 0.4, 0) == pytest.approx(2.0)  # better than clean is above 1


def test_equivariance_error_scales_each_map_to_max_one_and_ignores_negative_evidence():
    a = np.zeros((1, 4, 4))
    a[0, 0, 0] = 2
    b = np.zeros((1, 4, 4))
    b[0, 0, 0] = 7
    assert equivariance_error(a, b) == 0  # the same place, any scale
    neg = a.copy()
    neg[0, 3, 3] = -5  # negative evidence is clipped away
    assert equivariance_error(neg, b) == 0
    half = np.zeros((1, 4, 4))
    half[0, 0, :2] = 1
    assert equivariance_error(half, b) == pytest.approx(1 / 3)  # |1-1| + |1-0| over (2 + 1)
    assert equivariance_error(np.zeros((2, 4, 4)), np.zeros((2, 4, 4))) == 0  # blank maps: no division by zero
    assert equivariance_error(np.stack([half[0], a[0]]), np.stack([b[0], b[0]])) == pytest.approx((1 / 3 + 0) / 2)


def test_translation_is_a_pure_shift_by_a_fraction_of_the_width():
    x = torch.zeros(1, 3, 400, 100)
    x[..., 3, 4] = 1  # far from the centre: any rotation or shear (even 1 degree) would move it off the spot
    y = transform("translate", x, 0.1)  # 10 px (of the width, 100), right and down
    want = torch.zeros_like(x)
    want[..., 13, 14] = 1
    assert torch.equal(y, want)


def test_blur_uses_three_sigmas_each_side():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(transform("blur", x, 2.0), TF.gaussian_blur(x, [13, 13], [2.0, 2.0]))


def test_a_single_severity_away_from_the_identity_scores_its_accuracy_over_clean():
    assert robustness_score([2.0], [0.4], 0.8, 1.0) == pytest.approx(0.5)


def test_every_family_takes_an_empty_batch_and_so_does_predict():
    """A shard past the end of a small test set has no images: it must give empty results, not fail."""
    from cvaudit.net.pixel_space import predict

    from tiny_models import pixel_cnn
    empty = torch.zeros(0, 3, 8, 8)
    for family in IDENTITY:
        away = {"scale": 0.5, "brightness": 0.5, "contrast": 0.5, "jpeg": 50, "rotate": 15}.get(family, 0.1)
        assert transform(family, empty, away, seeds=[]).shape == (0, 3, 8, 8), family
    preds, conf = predict(pixel_cnn(), torch.zeros(0, 3, 28, 28), 4)
    assert preds.dtype == torch.long and preds.shape == conf.shape == (0,)
