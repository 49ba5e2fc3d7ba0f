"""mixture_2d and digits_8x8."""
import pytest
import torch

from gradwise.diffusion.toy import digits_8x8, mixture_2d, mixture_2d_centers


def test_mixture_shapes_modes_and_seeding():
    x, y = mixture_2d(4000, modes=4, radius=3.0, std=0.01, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and y.shape == (4000,) and y.dtype == torch.int64
    centers = mixture_2d_centers(4, 3.0)
    torch.testing.assert_close(centers, torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]]),
                               atol=1e-6, rtol=0)
    assert (x - centers[y]).norm(dim=1).max() < 0.06  # 6 std of a 2-D Gaussian of std 0.01
    x2, y2 = mixture_2d(4000, modes=4, radius=3.0, std=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_mixture_weights_are_followed():
    x, y = mixture_2d(20000, weights=[3, 1, 0, 0, 0, 0, 0, 0], generator=torch.Generator().manual_seed(1))
    share = torch.bincount(y, minlength=8).double() / 20000
    assert abs(share[0] - 0.75) < 0.02 and abs(share[1] - 0.25) < 0.02 and share[2:].sum() == 0


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n"), ({"n": 5, "modes": 0}, "modes"), ({"n": 5, "std": 0.0}, "std"),
    ({"n": 5, "radius": -1.0}, "radius"), ({"n": 5, "weights": [1.0] * 7}, "weights"),
    ({"n": 5, "weights": [-1.0] + [1.0] * 7}, "weights"), ({"n": 5, "weights": [0.0] * 8}, "weights")])
def test_mixture_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mixture_2d(**kwargs)


def test_digits_split_is_fixed_disjoint_and_in_range():
    x_tr, y_tr = digits_8x8("train")
    x_te, y_te = digits_8x8("test")
    x_all, _ = digits_8x8("all")
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8) and x_all.shape[0] == 1797
    assert x_tr.min() == -1 and x_tr.max() == 1 and x_tr.dtype == torch.float32
    assert torch.bincount(y_te).min() >= 43  # stratified: 43 to 46 of each digit
    x_tr2, _ = digits_8x8("train")
    assert torch.equal(x_tr, x_tr2) and x_tr2.data_ptr() != x_tr.data_ptr()  # fresh tensors, same split
    with pytest.raises(ValueError, match="split"):
        digits_8x8("val")
