"""Golden data for H2O's dynamics ratio, dynamics-gap coefficient, weighted simulated TD loss and penalty, made
by running the authors' code.

Repository: github.com/t6-thu/H2O, commit 7c87f5af2254f000960ab12677f743ca274dae16, file
``SimpleSAC/sim2real_sac.py``. Their file is not part of this repository: point REPO at a git directory of
theirs (a clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/H2O .venv/bin/python tools/golden/make_h2o_golden.py

It writes the file at that commit into a temporary folder and imports it with stubs for the modules it imports
but these methods do not use (``imp``, ``distutils``, ``turtle``, ``certifi``, ``ml_collections``, their ``model``
and ``utils_h2o``). On a namespace holding two fixed discriminators (seeded float64 ``nn.Linear`` layers for
:math:`D_{sa}` and :math:`D_{sas}`; their outputs are recorded) and their default config, it calls their
``Sim2realSAC.real_sim_dynacmis_ratio`` and ``kl_sim_divergence`` (which draws the N = 10 perturbed next states;
the :math:`D_{sas}` logits it saw are stored), then runs the lines of their ``train`` that weight the simulated TD
errors (``sqrt_IS_ratio`` ... ``sim_qf1_loss``) and compute the penalty (``omega = u_sa / u_sa.sum()`` ...
``cql_qf2_diff``), cut from the source and executed as written, on seeded Q values. Writes
tests/data/h2o_golden.pt.
"""
import inspect
import os
import sys
import textwrap
import types

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

COMMIT = "7c87f5af2254f000960ab12677f743ca274dae16"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "h2o_golden.pt")


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod


def load_theirs():
    extract(os.environ["REPO"], COMMIT, ["SimpleSAC/sim2real_sac.py"], on_path=("SimpleSAC",))
    _stub("imp")
    _stub("distutils")
    _stub("distutils.command")
    _stub("distutils.command.config", config=None)
    _stub("turtle", pd=None)
    _stub("certifi", where=None)

    class ConfigDict(types.SimpleNamespace):
        def __init__(self, d=None):
            super().__init__(**(d or {}))

        def update(self, other):
            self.__dict__.update(other.__dict__)

    _stub("ml_collections", ConfigDict=ConfigDict)
    _stub("model", Scalar=None, soft_target_update=None)
    _stub("utils_h2o", prefix_metrics=None)
    import sim2real_sac
    return sim2real_sac


def cut(src: str, start: str, end: str) -> str:
    """The lines of ``src`` from the one holding ``start`` to the end of the statement holding ``end``."""
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if start in l)
    j = next(k for k, l in enumerate(lines) if k >= i and end in l)
    depth = lines[j].count("(") - lines[j].count(")")
    while depth > 0:  # the statement goes on until its brackets close
        j += 1
        depth += lines[j].count("(") - lines[j].count(")")
    return textwrap.dedent("\n".join(lines[i:j + 1]))


def main() -> None:
    sac = load_theirs()
    cls = sac.Sim2realSAC
    config = cls.get_default_config()
    config.device = "cpu"
    g = torch.Generator().manual_seed(84)
    torch.manual_seed(84)
    obs_dim, act_dim = 3, 1
    golden = {}
    for case, (b, scale) in enumerate([(32, 1.0), (48, 4.0), (16, 12.0)]):
        d_sa = nn.Linear(obs_dim + act_dim, 2).double()
        d_sas = nn.Linear(2 * obs_dim + act_dim, 2).double()
        with torch.no_grad():
            for m in (d_sa, d_sas):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * scale)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        seen = {"sa": [], "sas": []}

        def f_sa(o, a, d_sa=d_sa, seen=seen):
            out = d_sa(torch.cat([o, a], 1))
            seen["sa"].append(out.detach().clone())
            return out

        def f_sas(o, a, o2, d_sas=d_sas, seen=seen):
            out = d_sas(torch.cat([o, a, o2], 1))
            seen["sas"].append(out.detach().clone())
            return out

        me = types.SimpleNamespace(d_sa=f_sa, d_sas=f_sas, config=config, next_observation_sampler=None,
                                   std=torch.rand(obs_dim, generator=g, dtype=torch.float64) + 0.5)
        me.log_sim_real_dynacmis_ratio = types.MethodType(cls.log_sim_real_dynacmis_ratio, me)
        obs = torch.randn(b, obs_dim, generator=g, dtype=torch.float64)
        act = torch.rand(b, act_dim, generator=g, dtype=torch.float64) * 2 - 1
        nxt = obs + 0.1 * torch.randn(b, obs_dim, generator=g, dtype=torch.float64)
        ratio = cls.real_sim_dynacmis_ratio(me, obs, act, nxt)
        sa_logits, sas_logits = seen["sa"][-1], seen["sas"][-1]
        seen["sa"].clear(), seen["sas"].clear()
        u_sa = cls.kl_sim_divergence(me, obs, act, nxt.clone())
        n = config.sampling_n_next_states
        sas_n = seen["sas"][-1].reshape(b, n, 2)
        sa_n = seen["sa"][-1].reshape(b, n, 2)[:, 0]

        # the lines of their train() that weight simulated TD errors and form the penalty, run as written
        src = inspect.getsource(cls.train)
        sim_q1_pred = torch.randn(b, generator=g, dtype=torch.float64) * 5
        sim_q2_pred = torch.randn(b, generator=g, dtype=torch.float64) * 5
        sim_td_target = torch.randn(b, generator=g, dtype=torch.float64) * 5
        real_q1_pred = torch.randn(b + 8, generator=g, dtype=torch.float64) * 5
        real_q2_pred = torch.randn(b + 8, generator=g, dtype=torch.float64) * 5
        ns = {"torch": torch, "F": F, "self": types.SimpleNamespace(
            config=config, real_sim_dynacmis_ratio=lambda o, a, o2: cls.real_sim_dynacmis_ratio(me, o, a, o2),
            _total_steps=1),
            "sim_observations": obs, "sim_actions": act, "sim_next_observations": nxt,
            "sim_q1_pred": sim_q1_pred, "sim_q2_pred": sim_q2_pred, "sim_td_target": sim_td_target,
            "real_q1_pred": real_q1_pred, "real_q2_pred": real_q2_pred, "u_sa": u_sa,
            "cql_q1": sim_q1_pred.clone(), "cql_q2": sim_q2_pred.clone()}
        exec(cut(src, "if self.config.use_td_target_ratio:", "sim_qf2_loss = F.mse_loss("), ns)
        exec(cut(src, "omega = u_sa / u_sa.sum()", "std_omega  = omega.std()"), ns)
        penalty_src = cut(src, "cql_q1 += torch.log(omega)", "cql_qf2_gap = torch.logsumexp(") + "\n" + \
            cut(src, "cql_qf1_diff = torch.clamp(", "cql_qf2_diff = torch.clamp(")
        exec(penalty_src, ns)
        golden[f"case{case}"] = {
            "sa_logits": sa_logits, "sas_logits": sas_logits, "ratio": ratio,
            "sa_logits_n": sa_n, "sas_logits_n": sas_n, "u": u_sa,
            "sim_q1": sim_q1_pred, "sim_q2": sim_q2_pred, "sim_td_target": sim_td_target,
            "real_q1": real_q1_pred, "real_q2": real_q2_pred,
            "sim_qf1_loss": ns["sim_qf1_loss"], "sim_qf2_loss": ns["sim_qf2_loss"],
            "cql_qf1_diff": ns["cql_qf1_diff"], "cql_qf2_diff": ns["cql_qf2_diff"],
            "cql_min_q_weight": config.cql_min_q_weight, "cql_temp": config.cql_temp,
        }
    torch.save(golden, OUT)
    print(f"wrote {len(golden)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
