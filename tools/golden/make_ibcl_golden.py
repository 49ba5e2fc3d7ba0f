"""Golden data for IBCL's zero-shot pieces, made by running the authors' code.

Repository: github.com/ibcl-anon/ibcl, commit 7bdfcef5a6c85fb9c4cda79040d06c8f668b8cfb ("Initial submission",
the commit the issue names). Their files are not part of this repository: point REPO at a git directory of
theirs (a clone, or the mirror the search tool's ``fetch`` brings). Their code needs pyro (they pin
pyro-ppl 1.8.4); gradwise does not, so run it with a separate environment holding torch 2.13.0, numpy, scipy,
scikit-learn and pyro-ppl 1.8.4 (``pip install --no-deps pyro-ppl==1.8.4 pyro-api opt_einsum tqdm`` next to
the project's packages was enough), from the repository root:

    REPO=/path/to/their/repo /tmp/ibcl-venv/bin/python tools/golden/make_ibcl_golden.py

It reads, at that commit with ``git show``, ``ibcl_main/zero_shot_model_locate.py``, ``models/models.py``
and ``utils/dataloader_utils.py`` into a temporary folder and imports them. In float64, with a knowledge base
of 3 tasks x 3 extreme points for their ``BayesianClassifierSmall`` (``fc1``: 512 -> 1), means from a seeded
normal and standard deviations from a seeded uniform in [0.05, 1.05), written into pyro's parameter store
under their names (``{task}_{extreme}_fc1.weight_mu`` ...):

* ``pref_convex_combination`` for preferences over 1, 2 and 3 tasks (the combined means and stds);
* ``compute_hdr`` at alpha 0.1 and 0.5 (lower and upper bounds) and ``normal_icdf`` at a few quantiles;
* ``sample_hdr`` after ``torch.manual_seed(seed)`` (their draws: a fresh ``BayesianClassifierSmall``, whose
  initialization consumes the global generator, then one ``torch.rand(1)`` per parameter tensor).

Their VI training (``fgcs_update``) is stochastic through pyro's sampling and, at this commit, does not run
(``general_model`` is called with one argument too many); it is not part of the golden data.

Writes tests/data/ibcl_golden.pt.
"""
import os

import torch
from authors_code import extract

COMMIT = "7bdfcef5a6c85fb9c4cda79040d06c8f668b8cfb"
here = os.path.dirname(os.path.abspath(__file__))
extract(os.environ["REPO"], COMMIT, ["ibcl_main/zero_shot_model_locate.py", "models/models.py",
                                     "utils/dataloader_utils.py"], on_path=("", "ibcl_main"))
import pyro  # noqa: E402
import pyro.distributions.constraints as constraints  # noqa: E402
import zero_shot_model_locate as z  # noqa: E402

torch.set_default_dtype(torch.float64)
gen = torch.Generator().manual_seed(0)
shapes = {"fc1.weight": (1, 512), "fc1.bias": (1,)}
pyro.clear_param_store()
base = {}
for i in range(3):
    for j in range(3):
        for n, shape in shapes.items():
            mu = torch.randn(shape, generator=gen)
            sigma = 0.05 + torch.rand(shape, generator=gen)
            pyro.param(f"{i}_{j}_{n}_mu", mu.clone())
            pyro.param(f"{i}_{j}_{n}_sigma", sigma.clone(), constraint=constraints.positive)
            base[f"{i}_{j}_{n}"] = (mu, sigma)

cases = []
for pref in ([1.0], [0.3, 0.7], [0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]):
    comb = z.pref_convex_combination(pref)
    case = dict(preference=torch.tensor(pref), mu={}, sigma={}, hdr={}, samples=[])
    for n in shapes:
        case["mu"][n] = comb[n].base_dist.loc.detach().clone()
        case["sigma"][n] = comb[n].base_dist.scale.detach().clone()
    for alpha in (0.1, 0.5):
        hdr = z.compute_hdr(comb, alpha=alpha)
        case["hdr"][alpha] = {n: (lo.detach().clone(), hi.detach().clone()) for n, (lo, hi) in hdr.items()}
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = z.sample_hdr(z.compute_hdr(comb, alpha=0.5))
        case["samples"].append(dict(seed=seed, alpha=0.5,
                                    params={n: p.detach().clone() for n, p in net.named_parameters()}))
    cases.append(case)

icdf = [(mu, sigma, q, float(z.normal_icdf(mu, sigma, q))) for mu, sigma in ((0.0, 1.0), (0.3, 2.5))
        for q in (0.05, 0.25, 0.5, 0.75, 0.975)]
out = os.path.join(here, "..", "..", "tests", "data", "ibcl_golden.pt")
torch.save(dict(commit=COMMIT, base=base, cases=cases, icdf=icdf, torch=str(torch.__version__),
                pyro=pyro.__version__), out)
print("wrote", os.path.normpath(out))
