"""Golden DRM runs, made by running the authors' own ``DRM`` classes (training, plain inference, adaptation).

Source: github.com/yfzhang114/AdaNPC at commit 6fc8256: ``domainbed/algorithms.py``'s ``DRM`` (``update``,
``forward``, ``softmax_entropy``) and ``domainbed/adapt_algorithms.py``'s ``DRM`` (which inherits
``DRMFull.forward_and_adapt`` / ``entropy_predict_label_drm``), run unchanged. Stubbed is their plumbing
only: ``domainbed.networks`` (``Featurizer`` returns the seeded test featurizer, ``Classifier`` is
``nn.Linear`` as theirs with ``nonlinear_classifier=False``; the real module imports torchvision) and
``domainbed.lib.misc`` (its ``random_pairs_of_minibatches``, unused by DRM; the real module imports tqdm).
Their adaptation code moves buffers with ``.cuda()``: ``torch.Tensor.cuda`` is the identity here (CPU).

The flow is that of their ``train.py`` / ``unsupervised_adaptation.py``: ``DRM.update`` on one minibatch
per source domain (the default ``lf_alg='entropy'``), ``DRM.forward`` for plain inference, then the
adapted ``DRM`` built from the trained algorithm with ``cached_loader=True`` and ``label='drm'``, the
features computed by the featurizer in eval mode (``generate_featurelized_loader``), and each test batch of
features through ``adapted(z, adapt=True)``, with ``adapted.reset()`` where a case asks for it.

Everything is float64 and seeded: a featurizer Linear(6, 8), BatchNorm1d(8), ReLU; ``D + 1`` heads
Linear(8, C); source domains drawn around shared class means with a per-domain shift; test batches of 8
with another shift. Run from the repository root with their checkout (e.g. ``git archive 6fc8256``) at
DRM_REF:

    DRM_REF=/path/to/AdaNPC PYTHONPATH=src .venv/bin/python tools/golden/make_drm_golden.py

Writes tests/data/drm_golden.pt: a list of cases, each with D, C, the initial state_dict (of an
``nn.Sequential(featurizer, ModuleList(heads))``), the training minibatches and hparams, per training
step the loss and the state afterwards, the plain-inference batch and logits, then the adaptation
hparams, the test batches, the call after which ``reset()`` is called (or -1), and per call the returned
scores and the heads' state afterwards.
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)  # their adaptation buffers are made with the default dtype
torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU run: their .cuda() calls move nothing
REF = Path(os.environ["DRM_REF"]) / "domainbed"
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "drm_golden.pt"
FEATURIZER = {}


def load_theirs():
    pkg = types.ModuleType("domainbed")
    pkg.__path__ = [str(REF)]
    sys.modules["domainbed"] = pkg
    networks = types.ModuleType("domainbed.networks")

    def featurizer(input_shape, hparams):
        f = FEATURIZER["next"]
        f.n_outputs = 8
        return f

    networks.Featurizer = featurizer
    networks.Classifier = lambda n_in, n_out, is_nonlinear=False: nn.Linear(n_in, n_out)
    sys.modules["domainbed.networks"] = networks
    lib = types.ModuleType("domainbed.lib")
    lib.__path__ = []
    misc = types.ModuleType("domainbed.lib.misc")
    misc.random_pairs_of_minibatches = None
    sys.modules["domainbed.lib"] = lib
    sys.modules["domainbed.lib.misc"] = misc
    mods = {}
    for name in ("algorithms", "adapt_algorithms"):
        spec = importlib.util.spec_from_file_location(f"domainbed.{name}", REF / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"domainbed.{name}"] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods["algorithms"], mods["adapt_algorithms"]


algorithms, adapt_algorithms = load_theirs()


def data(seed, num_domains, num_classes, n_per_domain, n_steps, n_batches, shift):
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(num_classes, 6, generator=g)
    dshift = 0.7 * torch.randn(num_domains, 6, generator=g)
    steps = []
    for _ in range(n_steps):
        mb = []
        for d in range(num_domains):
            y = torch.randint(num_classes, (n_per_domain,), generator=g)
            mb.append((means[y] + dshift[d] + torch.randn(n_per_domain, 6, generator=g), y))
        steps.append(mb)
    batches = []
    for _ in range(n_batches):
        y = torch.randint(num_classes, (8,), generator=g)
        batches.append(means[y] + shift + 1.3 * torch.randn(8, 6, generator=g))
    return steps, batches


def run_case(name, seed, num_domains, num_classes, train_lr, adapt, n_steps, n_batches, shift, reset_after):
    torch.manual_seed(seed)
    FEATURIZER["next"] = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
    hparams = {"lf_alg": "entropy", "prototype_K": 50, "batch_size": 6, "nonlinear_classifier": False,
               "lr": train_lr, "weight_decay": 0.0}
    alg = algorithms.DRM((6,), num_classes, num_domains, hparams)
    whole = nn.Sequential(alg.featurizer, alg.classifier_list)
    init = {k: v.clone() for k, v in whole.state_dict().items()}
    steps, batches = data(seed + 100, num_domains, num_classes, 6, n_steps, n_batches, shift)
    losses, states = [], []
    alg.train()
    for mb in steps:
        losses.append(alg.update(mb)["loss"])
        states.append({k: v.clone() for k, v in whole.state_dict().items()})
    alg.eval()
    with torch.no_grad():
        plain = alg(batches[0]).clone()
    adapt_hparams = dict(adapt, label="drm", cached_loader=True)
    adapted = adapt_algorithms.DRM((6,), num_classes, num_domains, adapt_hparams, alg)
    scores, heads, updated = [], [], []
    for i, x in enumerate(batches):
        alg.featurizer.eval()  # generate_featurelized_loader: network.eval()
        with torch.no_grad():
            z = alg.featurizer(x)
        before = [p.clone() for p in adapted.model.classifier_list.parameters()]
        out = adapted(z, adapt=True)
        scores.append(out.detach().clone())
        after = list(adapted.model.classifier_list.parameters())
        updated.append(any(not torch.equal(a, b) for a, b in zip(after, before)))
        heads.append({k: v.clone() for k, v in adapted.model.classifier_list.state_dict().items()})
        if i == reset_after:
            adapted.reset()
    print(f"{name}: D={num_domains} C={num_classes} {adapt} losses {[round(v, 4) for v in losses]} "
          f"updates per call {updated}")
    return {"name": name, "num_domains": num_domains, "num_classes": num_classes, "init": init,
            "train_lr": train_lr, "train_steps": steps, "losses": losses, "train_states": states,
            "plain_x": batches[0], "plain_logits": plain, "adapt": dict(adapt), "batches": batches,
            "reset_after": reset_after, "scores": scores, "heads": heads, "updated": updated}


def main():
    cases = [
        # per-sample head selection (gamma=-1); beta=0.1 < 1/C pseudo-labels every sample
        run_case("select", 0, 2, 3, 1e-2, {"alpha": 1.0, "beta": 0.1, "gamma": -1.0, "step": 1}, 3, 4, 0.8, -1),
        # entropy-power weights (gamma=1), a selective beta, 3 steps per call, a reset after the second call
        run_case("weighted_reset", 1, 3, 3, 1e-2, {"alpha": 10.0, "beta": 0.355, "gamma": 1.0, "step": 3},
                 2, 4, 1.0, 1),
        # gamma=0 (uniform weights over D+1, D summed), 4 classes
        run_case("uniform_four", 2, 2, 4, 5e-3, {"alpha": 1.0, "beta": 0.1, "gamma": 0.0, "step": 1}, 2, 3, 0.5, -1),
        # beta above e/(e+C-1): no pseudo-label, no update; gamma=5
        run_case("frozen", 3, 2, 3, 1e-2, {"alpha": 1.0, "beta": 1.1, "gamma": 5.0, "step": 1}, 1, 2, 1.0, -1),
    ]
    torch.save(cases, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), torch {torch.__version__}")


if __name__ == "__main__":
    main()
