"""The causal-pinn study's pieces: its reference solutions and what one run returns."""
import dataclasses

import numpy as np
import pytest

from gradwise.arena.causal_pinn_runs import allen_cahn_reference, oscillator_exact, train_pinn
from gradwise.arena.causal_pinn_study import CONFIG, METHODS


def test_oscillator_exact_solves_the_ode():
    t = np.linspace(0.0, 20.0, 200001)
    u = oscillator_exact(t, zeta=0.05, omega=1.3)
    h = t[1] - t[0]
    du = np.gradient(u, h)
    d2u = np.gradient(du, h)
    r = d2u + 2 * 0.05 * 1.3 * du + 1.3 ** 2 * u
    assert np.abs(r[10:-10]).max() < 1e-6
    assert u[0] == pytest.approx(1.0) and (u[1] - u[0]) / h == pytest.approx(0.0, abs=1e-3)


def test_allen_cahn_reference_agrees_with_a_finer_explicit_solve():
    # a short window, compared with forward Euler in space-time finite differences at a much smaller step
    nu, t_end = 1e-4, 0.05
    t, x, u = allen_cahn_reference(nu, t_end, n_x=128, dt=1e-4, n_out=6)
    h, dt = x[1] - x[0], 1e-6
    v = x ** 2 * np.cos(np.pi * x)
    for _ in range(int(round(t_end / dt))):
        lap = (np.roll(v, -1) - 2 * v + np.roll(v, 1)) / h ** 2
        v = v + dt * (nu * lap + 5 * v - 5 * v ** 3)
    # the initial state has a kink at x = +-1 (periodic), where the two schemes differ most
    assert np.abs(u[-1] - v).max() < 1e-3 and np.abs(u[-1] - v).mean() < 1e-4
    assert np.allclose(u[0], x ** 2 * np.cos(np.pi * x)) and t[-1] == pytest.approx(t_end)


@pytest.mark.parametrize("problem", ["oscillator", "allen-cahn"])
def test_a_run_returns_its_scores(problem):
    cfg = dataclasses.replace(CONFIG, steps=4, check_every=2, chunks=4, ac_t_end=0.1)
    row = train_pinn(cfg, problem, "causal-annealed", 0)
    assert row["method"] == f"causal-annealed@{problem}" and len(row["curve_err"]) == 2
    assert all(np.isfinite([row["rel_l2"], row["rel_l2_early"], row["rel_l2_late"], row["min_w"]]))
    assert 0.0 <= row["min_w"] <= 1.0 and row["final_stage"] >= 0


def test_plain_is_causal_at_eps_zero():
    cfg = dataclasses.replace(CONFIG, steps=3, check_every=3, chunks=4, causal_eps=0.0)
    a, b = train_pinn(cfg, "oscillator", "plain", 1), train_pinn(cfg, "oscillator", "causal", 1)
    assert a["rel_l2"] == b["rel_l2"] and a["curve_err"] == b["curve_err"]
    c = train_pinn(dataclasses.replace(cfg, causal_eps=100.0), "oscillator", "causal", 1)
    assert c["rel_l2"] != a["rel_l2"]


def test_methods_cover_both_problems_and_three_losses():
    assert {m.split("@")[1] for m in METHODS} == {"oscillator", "allen-cahn"}
    assert {m.split("@")[0] for m in METHODS} == {"plain", "causal", "causal-annealed"}
