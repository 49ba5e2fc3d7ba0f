"""Golden values for the correctness-aware calibrator and ECE, made by running the authors' code.

The authors' files are not part of this repository. Point CA_REFS at the
``src`` folder of github.com/liuyvchi/Correctness-aware-calibration (the one
holding ``cal_metrics/temperature_scaling_CA.py``; golden made at commit
d843d4b98b119d3a80bbb50a1f83a057f8635057), then run from the repository root:

    CA_REFS=/path/to/Correctness-aware-calibration/src .venv/bin/python tools/golden/make_correctness_aware_golden.py

Their code moves everything to CUDA; here ``.cuda()`` is made a no-op so it
runs on the CPU unchanged otherwise. Writes tests/data/correctness_aware_golden.pt:

* ``calibrator``: ``Temperature_adaptive(input_dim=12, feat_dim=5).set_temperature``
  (their whole training loop: CA loss, Adam lr 1e-4, 10 epochs, batch 1000)
  on 600 synthetic samples (one batch an epoch, so their shuffling does not
  matter), once with their Adam and once with Adam swapped for SGD(lr=0.5) so
  that the result is sensitive to the loss's gradient size, not only its sign.
  Stored: inputs, initial and final weights of the parts that are trained.
* ``ece``: their torch ``_ECELoss`` (n_bins 25 and 15) on random logits.
"""
import importlib.util
import os
import sys

import torch
from torch import nn

refs = os.environ["CA_REFS"]
sys.path.insert(0, refs)
torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run of their CUDA code
nn.Module.cuda = lambda self, *a, **k: self
spec = importlib.util.spec_from_file_location("ts_ca", os.path.join(refs, "cal_metrics", "temperature_scaling_CA.py"))
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

here = os.path.dirname(os.path.abspath(__file__))
KEYS = ("embed_layer.0.weight", "embed_layer.0.bias", "temperature_layer.weight", "temperature_layer.bias")


def make_data(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 600, 10
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.where(torch.rand(n, generator=g) < 0.7, logits.argmax(1), torch.randint(0, c, (n,), generator=g))
    feats = torch.rand(n, 12, generator=g)
    return logits, feats, labels


cases = []
for seed, opt_name in ((0, "adam"), (1, "sgd")):
    torch.manual_seed(100 + seed)
    logits, feats, labels = make_data(seed)
    model = ref.Temperature_adaptive(input_dim=12, feat_dim=5)
    with torch.no_grad():  # start with temperatures inside the clamp range, away from its edges
        model.temperature_layer.bias.fill_(1.5)
    init = {k: v.detach().clone() for k, v in model.state_dict().items() if k in KEYS}
    saved = ref.optim.Adam
    if opt_name == "sgd":
        ref.optim.Adam = lambda params, lr: torch.optim.SGD(params, lr=0.5)
    try:
        model.set_temperature(logits, feats, labels)
    finally:
        ref.optim.Adam = saved
    final = {k: v.detach().clone() for k, v in model.state_dict().items() if k in KEYS}
    cases.append(dict(optimizer=opt_name, lr=1e-4 if opt_name == "adam" else 0.5, epochs=10, batch_size=1000,
                      logits=logits, features=feats, labels=labels, init=init, final=final))

g = torch.Generator().manual_seed(7)
ece_logits = torch.randn(2000, 10, generator=g) * 2.5
ece_labels = torch.where(torch.rand(2000, generator=g) < 0.6, ece_logits.argmax(1),
                         torch.randint(0, 10, (2000,), generator=g))
ece = {nb: float(ref._ECELoss(n_bins=nb)(ece_logits, ece_labels)) for nb in (15, 25)}

out = dict(reference="liuyvchi/Correctness-aware-calibration@d843d4b src/cal_metrics/temperature_scaling_CA.py "
                     f"(torch {torch.__version__}, CPU)",
           calibrator=cases, ece=dict(logits=ece_logits, labels=ece_labels, values=ece))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "correctness_aware_golden.pt"))
print("ece", ece, "cases", [(c["optimizer"], {k: float((c["final"][k] - c["init"][k]).abs().max()) for k in KEYS})
                            for c in cases])
