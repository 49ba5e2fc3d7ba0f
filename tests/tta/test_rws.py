"""RWS: signatures and patches against the authors' decompose (golden), the API, bad input, and a
digits run where patching a clean model recovers accuracy on noisy inputs."""
import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradwise.tta import patch, shallow_keys, weight_signature

GOLDEN = Path(__file__).parents[1] / "data" / "rws_golden.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def vgg_like(state=None) -> nn.Module:
    """The key layout of tools/golden/make_rws_golden.py (features.0/2/4 convolutions, classifier)."""
    m = nn.Module()
    m.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())
    m.classifier = nn.Linear(3 * 4 * 4, 5)
    m.double()
    if state is not None:
        m.load_state_dict(state)
    return m


def assert_state_close(got, want, atol=1e-12):
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_layers_and_signatures_match_the_authors(golden, k):
    assert shallow_keys(golden["clean"], k) == golden["keys"][k]
    assert shallow_keys(vgg_like(golden["clean"]), k) == golden["keys"][k]
    for i, robust in enumerate(golden["robust"]):
        sig = weight_signature(golden["clean"], robust, pretrained=golden["pretrained"], num_layers=k)
        assert_state_close(sig, golden["signature"][k][i])
        # modules give the same as state dicts
        sig_m = weight_signature(vgg_like(golden["clean"]), vgg_like(robust),
                                 pretrained=vgg_like(golden["pretrained"]), num_layers=k)
        assert_state_close(sig_m, sig, atol=0)


@pytest.mark.parametrize("case", ["alpha1", "mixed", "single"])
def test_patch_matches_the_authors_decompose(golden, case):
    w = golden["weights"][case]
    sigs = [weight_signature(golden["clean"], r, pretrained=golden["pretrained"], num_layers=2)
            for r in golden["robust"][:len(w)]]
    into = golden[golden["patch_into"][case]]
    # their decompose applies each weight twice (w^2): see patch's docstring
    out = patch(into, sigs, (w ** 2).tolist())
    assert_state_close(out, golden["patched"][case])
    model = vgg_like(into)
    assert patch(model, sigs, (w ** 2).tolist()) is model
    assert_state_close(model.state_dict(), golden["patched"][case])


def test_module_patched_in_place_state_dict_copied(golden):
    sig = weight_signature(golden["clean"], golden["robust"][0], pretrained=golden["pretrained"], num_layers=1)
    model = vgg_like(golden["clean"])
    w = model.features[0].weight
    assert patch(model, sig, 1.0) is model
    assert model.features[0].weight is w and w.requires_grad  # same parameters, changed in place
    torch.testing.assert_close(w.detach(), golden["clean"]["features.0.weight"] + sig["features.0.weight"])
    assert torch.equal(model.features[2].weight, golden["clean"]["features.2.weight"])  # not in the signature
    before = {k: v.clone() for k, v in golden["clean"].items()}
    out = patch(golden["clean"], sig, 1.0)
    assert out is not golden["clean"]
    assert_state_close(golden["clean"], before, atol=0)  # the state dict given is untouched
    assert_state_close(out, model.state_dict(), atol=0)


def test_several_signatures_compose_linearly_and_come_off(golden):
    clean, pre = golden["clean"], golden["pretrained"]
    s1, s2, s3 = (weight_signature(clean, r, pretrained=pre, num_layers=3) for r in golden["robust"])
    both = patch(clean, [s1, s2, s3], [0.5, -2.0, 1.5])
    one_by_one = patch(patch(patch(clean, s1, 0.5), s2, -2.0), s3, 1.5)
    assert_state_close(both, one_by_one)
    assert_state_close(patch(clean, [s1, s2], 0.5), patch(clean, [s1, s2], [0.5, 0.5]), atol=0)
    # a scaled patch moves the weights proportionally, and the opposite coefficient takes it off
    half = patch(clean, s1, 0.5)
    k = "features.0.weight"
    torch.testing.assert_close(half[k] - clean[k], 0.5 * (patch(clean, s1, 1.0)[k] - clean[k]))
    assert_state_close(patch(both, [s1, s2, s3], [-0.5, 2.0, -1.5]), clean)


def test_signature_is_orthogonal_to_the_clean_delta(golden):
    clean, pre = golden["clean"], golden["pretrained"]
    for r in golden["robust"]:
        sig = weight_signature(clean, r, pretrained=pre, num_layers=3)
        for k, s in sig.items():
            d_c, d_r = (clean[k] - pre[k]).reshape(-1), (r[k] - pre[k]).reshape(-1)
            assert abs(float(s.reshape(-1) @ d_c)) < 1e-12 * float(d_c.norm() * d_r.norm())
            assert float((s.reshape(-1) - d_r).norm()) > 1e-3  # the projection removed something


def test_without_pretrained_the_signature_is_the_difference(golden):
    clean, robust = golden["clean"], golden["robust"][1]
    sig = weight_signature(clean, robust, num_layers=2)
    same = weight_signature(clean, robust, pretrained=clean, num_layers=2)  # zero clean delta: no NaN
    for k in sig:
        torch.testing.assert_close(sig[k], robust[k] - clean[k], rtol=0, atol=1e-15)
        assert torch.equal(sig[k], same[k])


def test_shallow_keys_with_batchnorm_and_explicit_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, bias=False),
                          nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    assert shallow_keys(model, 1) == ["0.weight", "0.bias", "1.weight", "1.bias"]  # no running statistics
    assert shallow_keys(model, 2) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias"]
    assert shallow_keys(model, 3)[-2:] == ["6.weight", "6.bias"] and shallow_keys(model, 99) == shallow_keys(model, 3)
    robust = copy.deepcopy(model)
    with torch.no_grad():
        for t in robust.state_dict().values():
            if t.is_floating_point():
                t.add_(1.0)
    sig = weight_signature(model, robust, keys=["6.bias", "1.running_var"])
    assert list(sig) == ["6.bias", "1.running_var"] and all(torch.equal(v, torch.ones_like(v)) for v in sig.values())
    patch(model, sig, 2.0)
    assert torch.equal(model[1].running_var, torch.full((2,), 3.0))  # buffers are patched too when named


def test_signature_dtype_is_cast_to_the_model(golden):
    sig = {"features.0.bias": torch.ones(3, dtype=torch.float32)}
    out = patch(golden["clean"], sig, 1.0)
    assert out["features.0.bias"].dtype == torch.float64
    torch.testing.assert_close(out["features.0.bias"], golden["clean"]["features.0.bias"] + 1)


def test_bad_input(golden):
    clean, robust = golden["clean"], golden["robust"][0]
    with pytest.raises(TypeError, match="Invalid clean"):
        weight_signature([1, 2], robust)
    with pytest.raises(TypeError, match="Invalid robust"):
        weight_signature(clean, {"a": 1})
    with pytest.raises(TypeError, match="Invalid pretrained"):
        weight_signature(clean, robust, pretrained="x")
    short = {k: v for k, v in robust.items() if k != "features.0.bias"}
    with pytest.raises(ValueError, match=r"Invalid robust: no tensor named \['features.0.bias'\]"):
        weight_signature(clean, short)
    wrong = dict(robust, **{"features.2.weight": torch.zeros(4, 3, 1, 1, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"Invalid robust: 'features.2.weight' has shape \(4, 3, 1, 1\)"):
        weight_signature(clean, wrong, num_layers=2)
    weight_signature(clean, wrong, num_layers=1)  # the differing layer is not selected: fine
    with pytest.raises(ValueError, match="Invalid pretrained"):
        weight_signature(clean, robust, pretrained=wrong, num_layers=3)
    with pytest.raises(ValueError, match="Invalid keys.*not tensors of clean"):
        weight_signature(clean, robust, keys=["nope"])
    with pytest.raises(ValueError, match="Invalid keys: empty"):
        weight_signature(clean, robust, keys=[])
    with pytest.raises(ValueError, match="Invalid keys"):
        weight_signature(clean, robust, keys="features.0.weight")
    bn = nn.BatchNorm1d(2)
    with pytest.raises(ValueError, match="not floating"):
        weight_signature(bn, copy.deepcopy(bn), keys=["num_batches_tracked"])
    with pytest.raises(ValueError, match="Invalid num_layers"):
        weight_signature(clean, robust, num_layers=0)
    sig = weight_signature(clean, robust, num_layers=1)
    for bad in ([1.0, 2.0], float("nan"), True, "1", None, [float("inf")]):
        with pytest.raises(ValueError, match="Invalid coeffs"):
            patch(clean, sig, bad)
    with pytest.raises(ValueError, match="Invalid signatures"):
        patch(clean, [], 1.0)
    with pytest.raises(ValueError, match=r"Invalid signatures\[1\]"):
        patch(clean, [sig, "x"], 1.0)
    with pytest.raises(ValueError, match="Invalid model: no tensor named"):
        patch(clean, {"head.weight": torch.zeros(1)}, 1.0)
    with pytest.raises(ValueError, match=r"Invalid model: 'features.0.bias' has shape \(3,\)"):
        patch(clean, {"features.0.bias": torch.zeros(4)}, 1.0)
    with pytest.raises(ValueError, match="not floating tensors of model"):
        patch(bn, {"num_batches_tracked": torch.zeros(())}, 1.0)
    with pytest.raises(TypeError, match="Invalid model"):
        patch(3, sig, 1.0)


def digits():
    """scikit-learn's digits (pixels 0..16, then the label) read from its bundled file: importing
    sklearn.datasets alone takes seconds."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        pytest.skip("scikit-learn is not installed")
    return np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz", delimiter=",")


def test_patched_clean_model_recovers_noisy_digits_accuracy():
    """The arena's claim on a small scale: an MLP pretrained on clean digits, fine-tuned once on clean and
    once on gaussian-noise digits; the clean model patched with the first layer's signature is more
    accurate on noisy test digits than the clean model (+6 to +9 points over seeds 0-4 when written)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = torch.tensor(digits())
        x, y = data[:, :-1].float() / 16, data[:, -1].long()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        tr, te = perm[:1300], perm[1300:]

        def noisy(v, seed):
            return v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed))

        def train(model, xs, ys, seed):
            opt, gen = torch.optim.Adam(model.parameters(), lr=0.01), torch.Generator().manual_seed(seed)
            for _ in range(60):
                i = torch.randint(len(xs), (128,), generator=gen)
                opt.zero_grad()
                nn.functional.cross_entropy(model(xs[i]), ys[i]).backward()
                opt.step()
            return model

        def acc(model, xs):
            with torch.no_grad():
                return (model(xs).argmax(1) == y[te]).float().mean().item()

        torch.manual_seed(0)
        pre = train(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                    x[tr], y[tr], 0)
        clean = train(copy.deepcopy(pre), x[tr], y[tr], 1)
        robust = train(copy.deepcopy(pre), noisy(x[tr], 2), y[tr], 3)
        sig = weight_signature(clean, robust, pretrained=pre, num_layers=1)
        assert list(sig) == ["0.weight", "0.bias"]
        patched = patch(copy.deepcopy(clean), sig, 1.0)
        x_noisy = noisy(x[te], 99)
        assert acc(patched, x_noisy) > acc(clean, x_noisy) + 0.03
        assert acc(patched, x[te]) > 0.85  # the clean accuracy survives the patch
        patch(patched, sig, -1.0)  # taking the patch off gives the clean model back
        assert acc(patched, x_noisy) == acc(clean, x_noisy)
    finally:
        torch.set_num_threads(threads)
