"""Golden values for the SuSana losses (Proto-Triplet, ICNN), made by running the authors' code.

The authors' code is ``algorithms/icnn_loss.py`` of github.com/maumruiz/FSL-Loss (commit
249405f50421a2cf097a8ab4046db9cb32811164). It imports ``util.globals`` (only for
its training glue); a stub module is installed here. Point ``SUSANA_REF`` at
that file and run from the repository root:

    SUSANA_REF=/path/to/FSL-Loss/algorithms/icnn_loss.py .venv/bin/python tools/golden/make_susana_golden.py

Writes tests/data/susana_golden.pt (float64): Proto-Triplet cases (support,
labels in the code's class-major layout, queries, their prototypes, loss and
the gradients wrt support and queries) and ICNN cases (embeddings, labels,
k, ipc, the code's ``-log(modified_score(...))`` and its gradient), the
latter covering ``suppicnn`` (k=4) and ``fullicnn`` (ipc = shot + query)
as the training script calls them, plus clamped-k and pure-neighbourhood sets.
The code runs with torch's default dtype set to float64 (see the note below).
"""
import importlib.util
import os
import sys
import types

import torch

ref = os.environ.get("SUSANA_REF")
if not ref:
    raise SystemExit("set SUSANA_REF to the authors' algorithms/icnn_loss.py")
util = types.ModuleType("util")
util.globals = types.ModuleType("util.globals")
sys.modules["util"], sys.modules["util.globals"] = util, util.globals
spec = importlib.util.spec_from_file_location("icnn_loss_ref", ref)
icnn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(icnn)

# The code turns integer counts (count + 1e-7, count / k) into tensors of torch's default dtype; with
# float64 as the default, its whole score is computed in float64 (with float32 these are rounded).
torch.set_default_dtype(torch.float64)
here = os.path.dirname(os.path.abspath(__file__))
g = torch.Generator().manual_seed(0)
proto_cases, icnn_cases = [], []

for way, shot, query, dim, margin, spread in [(5, 1, 3, 8, 0.5, 1.0), (5, 5, 4, 16, 0.5, 1.0),
                                               (3, 2, 5, 4, 1.5, 1.5), (4, 3, 2, 6, 0.1, 2.0)]:
    centers = torch.randn(way, dim, generator=g, dtype=torch.float64) * 1.5
    support = (centers.repeat_interleave(shot, 0) + spread * torch.randn(way * shot, dim, generator=g,
                                                                         dtype=torch.float64)).requires_grad_()
    queries = (centers.repeat_interleave(query, 0) + spread * torch.randn(way * query, dim, generator=g,
                                                                          dtype=torch.float64)).requires_grad_()
    ys = torch.arange(0, way, 1 / shot).to(torch.int64)  # the code's class-major layout
    yq = torch.arange(0, way, 1 / query).to(torch.int64)
    protos = support.reshape(way, shot, -1).mean(1)  # ProtoNet.compute_prototypes
    loss = icnn.proto_triplet_loss(queries, yq, protos, torch.arange(way), way=way, margin=margin)
    loss.backward()
    proto_cases.append(dict(support=support.detach().clone(), support_labels=ys, queries=queries.detach().clone(),
                            query_labels=yq, margin=margin, loss=loss.detach().clone(),
                            grad_support=support.grad.clone(), grad_queries=queries.grad.clone()))

for n_cls, per_cls, dim, k, ipc, spread in [(5, 1, 8, 4, None, 1.0),    # suppicnn 5-way 1-shot: k clamped to 3
                                            (4, 4, 16, 4, None, 0.7),   # suppicnn 4-way 4-shot
                                            (4, 8, 8, 4, 8, 0.8),       # fullicnn, shot + query = 8
                                            (8, 4, 6, 4, 6, 1.5),       # k = 4 > the 3 same-class others
                                            (4, 4, 4, 2, None, 0.05),   # tight clusters: pure neighbourhoods
                                            (2, 8, 5, 1, 7, 3.0),       # wide spread: mixed neighbourhoods
                                            (2, 3, 5, 4, 5, 1.0)]:      # k clamped to N - 2, gamma = 1
    centers = torch.randn(n_cls, dim, generator=g, dtype=torch.float64) * 2.0
    x = (centers.repeat_interleave(per_cls, 0) + spread * torch.randn(n_cls * per_cls, dim, generator=g,
                                                                       dtype=torch.float64))
    perm = torch.randperm(x.shape[0], generator=g)
    x = x[perm].clone().requires_grad_()
    y = torch.arange(n_cls).repeat_interleave(per_cls)[perm]
    loss = -torch.log(icnn.modified_score(x, y, k=k, ipc=ipc))
    loss.backward()
    icnn_cases.append(dict(embeddings=x.detach().clone(), labels=y, k=k, neighbors=ipc, loss=loss.detach().clone(),
                           grad=x.grad.clone()))

torch.save(dict(proto_triplet=proto_cases, icnn=icnn_cases,
                reference="maumruiz/FSL-Loss@249405f algorithms/icnn_loss.py"),
           os.path.join(here, "..", "..", "tests", "data", "susana_golden.pt"))
print("proto", [round(float(c["loss"]), 6) for c in proto_cases])
print("icnn", [round(float(c["loss"]), 6) for c in icnn_cases])
