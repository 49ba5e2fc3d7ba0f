"""Self-Tuning Networks' hyperparameters and alternating loop, against the authors' code (golden data from
asteroidhouse/self-tuning-networks@3c42049, tools/golden/make_stn_golden.py), plus invariants and behaviour."""
from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradwise.schedules import (HyperLinear, SelfTuningTrainer, StnHyperparameter, StnHyperparameters,
                                per_example_dropout)

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "stn_golden.pt", weights_only=False)
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


class MLP(torch.nn.Module):
    """The golden runs' network: three HyperLinear layers, per-example dropout after each hidden one."""

    def __init__(self, num_hparams=3, dtype=F64):
        super().__init__()
        self.fc1 = HyperLinear(8, 16, num_hparams, dtype=dtype)
        self.fc2 = HyperLinear(16, 16, num_hparams, dtype=dtype)
        self.fc3 = HyperLinear(16, 3, num_hparams, dtype=dtype)

    def forward(self, x, hnet, hv):
        x = per_example_dropout(F.relu(self.fc1(x, hnet)), hv["dropout0"], self.training)
        x = per_example_dropout(F.relu(self.fc2(x, hnet)), hv["dropout1"], self.training)
        return self.fc3(x, hnet)


def _input_dropout(x, hv):
    return per_example_dropout(x, hv["indropout"], True)


def _specs(start, dtype=F64):
    return {"dropout0": StnHyperparameter.dropout(start), "dropout1": StnHyperparameter.dropout(start),
            "indropout": StnHyperparameter(start, 0.0, 1.0)}


def _golden_trainer(run, train_batches=None, val_batches=None):
    hp = StnHyperparameters(_specs(run["start"]), dtype=F64)
    model = MLP()
    model.load_state_dict(run["init"]["model"])
    opt = torch.optim.SGD(model.parameters(), lr=run["train_lr"], momentum=0.9)
    hyper = torch.optim.Adam([hp.htensor], lr=run["valid_lr"])
    scale = torch.optim.Adam([hp.hscale], lr=run["scale_lr"]) if run["tune_scales"] else None
    trainer = SelfTuningTrainer(model, hp, train_batches or run["train_batches"], val_batches or run["val_batches"],
                                opt, hyper, scale, entropy_weight=run["entropy_weight"],
                                tune_scales=run["tune_scales"], augment=_input_dropout)
    return trainer, model, hp


@pytest.mark.parametrize("name", ["default", "tuned_scales"])
def test_alternating_loop_matches_the_authors_step_by_step(name):
    run = GOLDEN["loops"][name]
    trainer, model, hp = _golden_trainer(run)
    # their create_hparams' starting values are ours
    torch.testing.assert_close(hp.htensor.detach(), run["init"]["htensor"], **TOL)
    torch.testing.assert_close(hp.hscale.detach(), run["init"]["hscale"], **TOL)
    assert list(hp.names) == run["names"]
    torch.manual_seed(11)  # the same noise and masks, drawn in the same order as theirs
    train_losses, val_losses = [], []
    for c in range(len(run["val_batches"])):
        out = trainer.step()
        train_losses += out["train_loss"]
        val_losses += out["val_loss"]
        torch.testing.assert_close(hp.htensor.detach(), run["htensor"][c], **TOL)
        torch.testing.assert_close(hp.hscale.detach(), run["hscale"][c], **TOL)
    torch.testing.assert_close(torch.tensor(train_losses, dtype=F64), run["train_losses"], **TOL)
    torch.testing.assert_close(torch.tensor(val_losses, dtype=F64), run["val_losses"], **TOL)
    final = model.state_dict()
    for k, v in run["final_model"].items():
        torch.testing.assert_close(final[k], v, **TOL, msg=k)
    assert len(trainer.schedule) == len(run["val_batches"])
    assert trainer.schedule[-1]["dropout0"] == pytest.approx(0.9 * torch.sigmoid(run["htensor"][-1][0]).item())
    if not run["tune_scales"]:
        torch.testing.assert_close(hp.hscale.detach(), run["init"]["hscale"], rtol=0, atol=0)


def test_transforms_entropy_and_perturb_match_the_authors():
    gold = GOLDEN["transforms"]
    hp = StnHyperparameters({"dropout": StnHyperparameter.dropout(0.1),
                             "hue": StnHyperparameter(0.1, 0.0, 0.5),
                             "contrast": StnHyperparameter(0.1, 0.0, 1.0),
                             "cutlength": StnHyperparameter(4.0, 0.0, 24.0, discrete=True, per_example=False)},
                            dtype=F64)
    torch.testing.assert_close(hp.constrain(gold["u"]), gold["values"], **TOL)
    with torch.no_grad():
        hp.hscale.copy_(gold["hscale"])
        hp.htensor.copy_(gold["htensor"])
    torch.testing.assert_close(hp.entropy().detach(), gold["entropy"], **TOL)
    torch.manual_seed(5)
    torch.testing.assert_close(hp.perturb(6).detach(), gold["perturbed"], **TOL)
    line = gold["line"]
    inf = math.inf
    for key, (lo, hi) in {"proj_lower": (0.5, inf), "proj_upper": (-inf, 2.0), "proj_none": (-inf, inf),
                          "proj_both": (-1.0, 3.0)}.items():
        spec = StnHyperparameter(1.0, lo, hi)
        torch.testing.assert_close(spec.project(line), gold[key], **TOL, msg=key)
        torch.testing.assert_close(spec.unconstrain(spec.project(line)), line, rtol=1e-8, atol=1e-8, msg=key)


def test_starting_values_project_back_to_init_and_scales_are_softplus():
    hp = StnHyperparameters({"a": StnHyperparameter.dropout(0.05), "b": StnHyperparameter(2.0, 0.5, math.inf, 0.3),
                             "c": StnHyperparameter(-1.0, -math.inf, 0.0, 1.0),
                             "d": StnHyperparameter(3.0, -math.inf, math.inf)}, dtype=F64)
    cur = hp.current()
    for name, value, scale in (("a", 0.05, 0.5), ("b", 2.0, 0.3), ("c", -1.0, 1.0), ("d", 3.0, 0.5)):
        assert cur[name] == pytest.approx(value, abs=1e-12)
        assert cur[name + "_scale"] == pytest.approx(scale, abs=1e-12)
    u = hp.perturb(2000, generator=torch.Generator().manual_seed(0)).detach()
    torch.testing.assert_close(u.std(0), hp.scale().detach(), rtol=0.08, atol=0)
    assert hp.index("c") == 2


def test_shared_column_is_one_value_per_batch_and_discrete_is_floored():
    hp = StnHyperparameters({"p": StnHyperparameter.dropout(0.3),
                             "holes": StnHyperparameter(2.0, 0.0, 4.0, discrete=True, per_example=False)})
    u = hp.perturb(10)
    assert torch.all(u[:, 1] == u[0, 1]) and u[:, 0].unique().numel() == 10
    vals = hp.constrain(u)
    assert torch.equal(vals[:, 1], torch.floor(vals[:, 1])) and ((vals[:, 0] > 0) & (vals[:, 0] < 0.9)).all()


def test_train_step_moves_only_the_weights_and_hyper_step_only_the_hyperparameters():
    run = GOLDEN["loops"]["tuned_scales"]
    trainer, model, hp = _golden_trainer(run)
    before_w = {k: v.clone() for k, v in model.state_dict().items()}
    before_h = {k: v.clone() for k, v in hp.state_dict().items()}
    trainer.train_step(*run["train_batches"][0])
    assert all(not torch.equal(before_w[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before_h[k], v) for k, v in hp.state_dict().items())
    assert hp.htensor.grad is None and hp.hscale.grad is None
    before_w = {k: v.clone() for k, v in model.state_dict().items()}
    grads_w = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.train()
    trainer.hyper_step(*run["val_batches"][0])
    assert model.training  # the mode is restored
    assert all(torch.equal(before_w[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(grads_w[n], p.grad) for n, p in model.named_parameters())  # no gradient leaked in
    assert all(not torch.equal(before_h[k], v) for k, v in hp.state_dict().items())
    assert trainer.train_steps_done == 1 and trainer.valid_steps_done == 1 and len(trainer.schedule) == 1


def test_entropy_term_widens_the_perturbation():
    # with a large tau and a loss that ignores the hyperparameters, the scale grows by the entropy term alone
    hp = StnHyperparameters({"p": StnHyperparameter.dropout(0.2)})
    model = torch.nn.Linear(2, 2)
    batches = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    trainer = SelfTuningTrainer(_Plain(model), hp, batches, batches, torch.optim.SGD(model.parameters(), lr=0.0),
                                entropy_weight=1.0, tune_scales=True)
    s0 = hp.scale().item()
    trainer.run(5)
    assert hp.scale().item() > s0 and len(trainer.schedule) == 5
    assert trainer.schedule[-1]["p_scale"] == pytest.approx(hp.scale().item())


class _Plain(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, hnet, hv):
        return self.inner(x)


def test_state_dict_round_trip_continues_bit_identically():
    run = GOLDEN["loops"]["tuned_scales"]
    stream_t = list(itertools.islice(itertools.cycle(run["train_batches"]), 24))
    stream_v = list(itertools.islice(itertools.cycle(run["val_batches"]), 12))
    a, model_a, hp_a = _golden_trainer(run, iter(stream_t), iter(stream_v))
    torch.manual_seed(0)
    a.run(3)
    state = copy.deepcopy(a.state_dict())  # as torch.save would keep it: the live tensors move on
    rng = torch.get_rng_state()
    a.run(3)
    b, model_b, hp_b = _golden_trainer(run, iter(stream_t[6:]), iter(stream_v[3:]))
    b.load_state_dict(state)
    torch.set_rng_state(rng)
    b.run(3)
    assert all(torch.equal(v, model_b.state_dict()[k]) for k, v in model_a.state_dict().items())
    assert torch.equal(hp_a.htensor, hp_b.htensor) and torch.equal(hp_a.hscale, hp_b.hscale)
    assert a.schedule == b.schedule and b.train_steps_done == 12 and b.valid_steps_done == 6
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict({"model": {}})


def test_an_iterator_that_runs_out_ends_the_run_and_a_list_starts_over():
    run = GOLDEN["loops"]["default"]
    trainer, _, _ = _golden_trainer(run, iter(run["train_batches"][:5]), run["val_batches"][:1])
    trainer.run(10)
    assert trainer.train_steps_done == 5 and trainer.valid_steps_done == 2  # the list gave its batch twice


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="init"):
        StnHyperparameter(0.95, 0.0, 0.9)
    with pytest.raises(ValueError, match="low, high"):
        StnHyperparameter(0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="scale"):
        StnHyperparameter(0.5, scale=0.0)
    with pytest.raises(ValueError, match="discrete"):
        StnHyperparameter(0.5, discrete=1)
    with pytest.raises(ValueError, match="specs"):
        StnHyperparameters({})
    with pytest.raises(TypeError, match="specs"):
        StnHyperparameters({"p": 0.5})
    hp = StnHyperparameters({"p": StnHyperparameter.dropout()})
    with pytest.raises(ValueError, match="batch_size"):
        hp.perturb(0)
    with pytest.raises(ValueError, match="Invalid u"):
        hp.constrain(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="name"):
        hp.index("q")
    model = MLP(1, torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(TypeError, match="model"):
        SelfTuningTrainer(lambda x: x, hp, data, data, opt)
    with pytest.raises(TypeError, match="hparams"):
        SelfTuningTrainer(model, {"p": 0.1}, data, data, opt)
    with pytest.raises(ValueError, match="optimizer"):
        SelfTuningTrainer(model, hp, data, data, torch.optim.SGD([hp.htensor], lr=0.1))
    with pytest.raises(ValueError, match="train_steps"):
        SelfTuningTrainer(model, hp, data, data, opt, train_steps=0)
    with pytest.raises(ValueError, match="scale_optimizer"):
        SelfTuningTrainer(model, hp, data, data, opt, scale_optimizer=torch.optim.Adam([hp.hscale]))
    with pytest.raises(ValueError, match="entropy_weight"):
        SelfTuningTrainer(model, hp, data, data, opt, entropy_weight=-1.0)
    with pytest.raises(TypeError, match="train_data"):
        SelfTuningTrainer(model, hp, 3, data, opt)
    with pytest.raises(ValueError, match="batch"):
        SelfTuningTrainer(model, hp, [torch.zeros(2, 8)], data, opt).run(1)


def test_on_digits_the_validation_loss_falls_and_the_dropout_rate_rises():
    """A 64-64-10 STN MLP on 300 digits (it overfits them): the validation loss falls, the tuned dropout rate
    climbs from 0.05, and the schedule has one entry per hyperparameter step."""
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    x_all, y_all = load_digits(return_X_y=True)
    x_all, y_all = torch.tensor(x_all / 16.0, dtype=torch.float32), torch.tensor(y_all)
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = perm[:300], perm[300:800]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = HyperLinear(64, 64, 1), HyperLinear(64, 10, 1)

        def forward(self, x, hnet, hv):
            return self.fc2(per_example_dropout(F.relu(self.fc1(x, hnet)), hv["dropout"], self.training), hnet)

    def batches(idx, seed, size=32):
        gen = torch.Generator().manual_seed(seed)
        while True:
            p = idx[torch.randperm(len(idx), generator=gen)]
            for i in range(0, len(p) - size + 1, size):
                yield x_all[p[i:i + size]], y_all[p[i:i + size]]

    torch.manual_seed(0)
    net, hp = Net(), StnHyperparameters({"dropout": StnHyperparameter.dropout(0.05)})

    def val_loss():
        net.eval()
        with torch.no_grad():
            u = hp.repeat(len(val_idx))
            return F.cross_entropy(net(x_all[val_idx], u, hp.as_dict(hp.constrain(u))), y_all[val_idx]).item()

    trainer = SelfTuningTrainer(net, hp, batches(train_idx, 1), batches(val_idx, 2),
                                torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
                                torch.optim.Adam([hp.htensor], lr=0.03))
    start = val_loss()
    schedule = trainer.run(120, warmup_steps=40)
    assert len(schedule) == 120 == trainer.valid_steps_done and trainer.train_steps_done == 280
    assert val_loss() < 0.5 * start
    rates = [e["dropout"] for e in schedule]
    assert rates[-1] > 0.08 and rates[-1] > rates[0]
