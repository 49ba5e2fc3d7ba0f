"""EDMDenoiser and ConsistencyDenoiser: the scalings against EDM's Table 1 (as NVlabs/edm EDMPrecond and
diffusers' EDMEulerScheduler compute them) and the consistency boundary condition against diffusers'
CMStochasticIterativeScheduler, in float64."""
import copy

import pytest
import torch
from torch import nn

from gradwise.diffusion.toy import ConsistencyDenoiser, EDMDenoiser, ToyConv8x8, ToyMLP


class Recorder(nn.Module):
    """A network that returns a fixed F and records what it was called with."""

    def __init__(self, out, num_classes=0):
        super().__init__()
        self.out, self.num_classes, self.calls = out, num_classes, []

    def forward(self, x, c_noise, labels):
        self.calls.append((x, c_noise, labels))
        return self.out


SIGMAS = torch.tensor([0.002, 0.01, 0.3, 1.0, 2.5, 80.0], dtype=torch.float64)


def test_edm_scalings_are_table_1():
    sd = 0.7
    c_skip, c_out, c_in, c_noise = EDMDenoiser(nn.Identity(), sigma_data=sd).scalings(SIGMAS)
    for i, s in enumerate(SIGMAS.tolist()):
        assert c_skip[i].item() == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-14)
        assert c_out[i].item() == pytest.approx(s * sd / (s ** 2 + sd ** 2) ** 0.5, rel=1e-14)
        assert c_in[i].item() == pytest.approx(1 / (sd ** 2 + s ** 2) ** 0.5, rel=1e-14)
        assert c_noise[i].item() == pytest.approx(torch.tensor(s, dtype=torch.float64).log().item() / 4, rel=1e-14)


def test_edm_forward_matches_diffusers_edm_preconditioning():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EDMEulerScheduler(sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    f = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    net = Recorder(f)
    out = EDMDenoiser(net, sigma_data=0.5)(x, SIGMAS)
    view = SIGMAS.view(-1, 1, 1, 1)
    torch.testing.assert_close(out, sched.precondition_outputs(x, f, view), rtol=1e-12, atol=0)
    x_in, c_noise, labels = net.calls[0]
    torch.testing.assert_close(x_in, sched.precondition_inputs(x, view), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_noise, sched.precondition_noise(SIGMAS), rtol=1e-12, atol=0)
    assert labels is None


def test_consistency_scalings_match_diffusers_cm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.CMStochasticIterativeScheduler(sigma_min=0.002, sigma_data=0.5)
    den = ConsistencyDenoiser(nn.Identity(), sigma_data=0.5, sigma_min=0.002)
    c_skip, c_out, c_in, c_noise = den.scalings(SIGMAS)
    ref_skip, ref_out = sched.get_scalings_for_boundary_condition(SIGMAS)
    torch.testing.assert_close(c_skip, ref_skip, rtol=1e-10, atol=0)
    torch.testing.assert_close(c_out, ref_out, rtol=1e-10, atol=1e-300)
    ref_in = EDMDenoiser(nn.Identity(), sigma_data=0.5).scalings(SIGMAS)
    torch.testing.assert_close(c_in, ref_in[2], rtol=0, atol=0)  # c_in and c_noise are EDM's
    torch.testing.assert_close(c_noise, ref_in[3], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consistency_boundary_is_identity_exactly(dtype):
    torch.manual_seed(0)
    net = ToyMLP(2, num_classes=3, width=16, depth=1)
    nn.init.normal_(net.out.weight)  # a network whose output is not zero
    den = ConsistencyDenoiser(net, sigma_min=0.002).to(dtype)
    x = torch.randn(5, 2, dtype=dtype)
    assert torch.equal(den(x, 0.002, torch.tensor([0, 1, 2, 3, 0])), x)
    assert not torch.equal(den(x, 0.01), x)


def test_labels_none_means_the_null_label_and_dtype_is_kept():
    torch.manual_seed(0)
    net = ToyConv8x8(num_classes=10, channels=8, blocks=1)
    nn.init.normal_(net.out.weight)
    den = EDMDenoiser(net).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    null = den(x, sigma, torch.full((3,), 10))
    assert null.dtype == torch.float64 and null.shape == x.shape
    torch.testing.assert_close(den(x, sigma), null, rtol=0, atol=0)
    assert not torch.allclose(den(x, sigma, torch.tensor([1, 2, 3])), null)


def test_scalar_and_per_sample_sigma_agree():
    den = EDMDenoiser(Recorder(torch.ones(4, 2)))
    x = torch.randn(4, 2)
    torch.testing.assert_close(den(x, 0.5), den(x, torch.full((4,), 0.5)))


def test_state_dict_and_deepcopy_round_trip():
    torch.manual_seed(0)
    den = EDMDenoiser(ToyMLP(2, num_classes=2, width=16, depth=2))
    nn.init.normal_(den.net.out.weight)
    twin = copy.deepcopy(den)
    fresh = EDMDenoiser(ToyMLP(2, num_classes=2, width=16, depth=2))
    fresh.load_state_dict(den.state_dict())
    x = torch.randn(3, 2)
    torch.testing.assert_close(fresh(x, 0.3, torch.tensor([0, 1, 2])), den(x, 0.3, torch.tensor([0, 1, 2])))
    torch.testing.assert_close(twin(x, 0.3), den(x, 0.3))


@pytest.mark.parametrize("sigma, match", [
    (0.0, "sigma"), (-1.0, "sigma"), (torch.ones(3), "sigma"), (torch.ones(4, 1), "sigma")])
def test_bad_sigma_raises_naming_it(sigma, match):
    den = EDMDenoiser(Recorder(torch.zeros(4, 2)))
    with pytest.raises(ValueError, match=match):
        den(torch.zeros(4, 2), sigma)


def test_consistency_sigma_below_sigma_min_raises():
    den = ConsistencyDenoiser(Recorder(torch.zeros(2, 2)), sigma_min=0.01)
    with pytest.raises(ValueError, match="sigma"):
        den(torch.zeros(2, 2), 0.005)
    with pytest.raises(ValueError, match="sigma_min"):
        ConsistencyDenoiser(nn.Identity(), sigma_min=0.0)


def test_nan_sigma_propagates():
    den = EDMDenoiser(Recorder(torch.zeros(2, 2)))
    assert torch.isnan(den(torch.ones(2, 2), torch.tensor([float("nan"), 1.0]))[0]).all()


@pytest.mark.parametrize("labels", [torch.tensor([0, 11]), torch.tensor([-1, 0]), torch.tensor([0]),
                                    torch.tensor([0.0, 1.0])])
def test_bad_class_labels_raise_naming_them(labels):
    den = EDMDenoiser(Recorder(torch.zeros(2, 1, 8, 8), num_classes=10))
    with pytest.raises(ValueError, match="class_labels"):
        den(torch.zeros(2, 1, 8, 8), 1.0, labels)


def test_labels_for_an_unconditional_net_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="class_labels"):
        EDMDenoiser(Recorder(torch.zeros(2, 2)))(torch.zeros(2, 2), 1.0, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMDenoiser(nn.Identity(), sigma_data=0.0)
    with pytest.raises(ValueError, match="net"):
        EDMDenoiser(lambda x: x)
    with pytest.raises(ValueError, match="x"):
        ToyMLP(3)(torch.zeros(2, 2), torch.zeros(2))


def test_nets_check_their_input():
    with pytest.raises(ValueError, match="x"):
        ToyConv8x8(channels=8, blocks=1)(torch.zeros(2, 1, 7, 7), torch.zeros(2))
    with pytest.raises(ValueError, match="class_labels"):
        ToyMLP(2)(torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    for bad in ({"dim": 0}, {"dim": 2, "width": 0}, {"dim": 2, "depth": 0}, {"dim": 2, "num_classes": -1}):
        with pytest.raises(ValueError, match=next(k for k, v in bad.items() if v in (0, -1))):
            ToyMLP(**bad)
