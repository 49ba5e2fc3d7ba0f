"""Golden values for UNPG, made by running the authors' head and pair-generation code.

The authors' files are not part of this repository. Point REFS at a folder
holding, from github.com/Jung-Jun-Uk/UNPG (commit a6f9c1731a68fc035eb8fe8198f5a5c643825a5b),
``recognition/models/head.py`` saved as ``unpg_head.py`` and
``recognition/models/build.py`` saved as ``unpg_build.py``, then run from the
repository root:

    REFS=/path/to/refs .venv/bin/python tools/golden/make_unpg_golden.py

``head.py`` is imported as is (ArcFace, CosFace, UNPG). From ``build.py``
only the two functions ``box_and_whisker_algorithm`` and
``convert_label_to_similarity`` are executed (its module imports need their
training stack); the forward pass replays ``HeadAndLoss.forward`` for one GPU
(``aux_sn`` stacked once). Writes tests/data/unpg_golden.pt, float64.
"""
import ast
import importlib.util
import os

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
refs = os.environ["REFS"]
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("unpg_head", os.path.join(refs, "unpg_head.py"))
head = importlib.util.module_from_spec(spec)
spec.loader.exec_module(head)
tree = ast.parse(open(os.path.join(refs, "unpg_build.py")).read())
funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)
         and n.name in ("box_and_whisker_algorithm", "convert_label_to_similarity")]
ns = {"torch": torch}
exec(compile(ast.Module(body=funcs, type_ignores=[]), "unpg_build.py", "exec"), ns)

g = torch.Generator().manual_seed(0)
out = []
for margin_type, n, d, c, s, m, wisk in [
    ("arcface", 12, 6, 5, 64.0, 0.5, 1.5), ("cosface", 12, 6, 5, 64.0, 0.5, 1.5),
    ("arcface", 16, 4, 6, 32.0, 0.3, 0.5), ("cosface", 10, 3, 4, 30.0, 0.35, 0.0),
    ("arcface", 20, 8, 3, 16.0, 0.2, 1.0),
]:
    x = torch.randn(n, d, generator=g, requires_grad=True)
    labels = torch.randint(0, c, (n,), generator=g)
    cls = head.ArcFace if margin_type == "arcface" else head.CosFace
    h = cls(in_feature=d, out_feature=c, s=s, m=m)
    with torch.no_grad():
        h.weight.copy_(torch.randn(c, d, generator=g))
    cosine = h(x, labels)
    sp, sn = ns["convert_label_to_similarity"](F.normalize(x), labels)
    sn_prime = ns["box_and_whisker_algorithm"](sn, wisk=wisk)
    aux_sn = torch.stack([torch.cat([sn_prime], dim=0)] * 1, dim=0)
    loss = head.UNPG(s=s, wisk=wisk)(cosine, aux_sn, labels)
    loss.backward()
    out.append(dict(embeddings=x.detach().clone(), labels=labels, weight=h.weight.detach().clone(),
                    kwargs=dict(margin_type=margin_type, s=s, m=m, whisker=wisk), loss=loss.detach().clone(),
                    grad_embeddings=x.grad.clone(), grad_weight=h.weight.grad.clone(), num_kept=int(sn_prime.numel()),
                    num_neg=int(sn.numel()), reference="Jung-Jun-Uk/UNPG @ a6f9c173 head.py + build.py"))
torch.save(out, os.path.join(here, "..", "..", "tests", "data", "unpg_golden.pt"))
print([(float(o["loss"]), o["num_kept"], o["num_neg"]) for o in out])
