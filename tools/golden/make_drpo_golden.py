"""Golden data for DR-PO's dataset reset (seed 217), made by running the authors' code.

Repositories: github.com/Cornell-RL/tril at commit 045d036 (``RollinProcessor`` in
``src/tril/utils/logit_processors.py``: the reset mask and the teacher forcing) and github.com/Cornell-RL/drpo
at commit bd825df (``src/tldr/drpo.py``: the masked clipped policy loss, the three ``pg_losses`` /
``pg_losses2`` / ``pg_loss`` lines, cut from the file by their text and run verbatim). tril's module is
imported as is, with ``transformers.generation.logits_process.LogitsProcessor`` stubbed by ``object`` (its
base class; nothing else of transformers is used). Needs numpy and torch only; from the repository root:

    TRIL=/path/to/tril DRPO=/path/to/drpo PYTHONPATH=src .venv/bin/python tools/golden/make_drpo_golden.py

(TRIL, DRPO: git directories of theirs, clones or the mirrors the search tool's ``fetch`` brings.) Writes
tests/data/drpo_golden.pt:

* ``mask_counts``: their ``create_mask`` on 4000 rows of each reference length 1, 2, 3, 5 and 9 (width 10),
  beta 1.0 / 0.6 / 0.0, seeded numpy ``default_rng(217)``: how often each prefix length was drawn (their
  draws are numpy's, so ours are compared in distribution); and ``mask_rows``: every row is a prefix of ones;
* ``forcing``: a tiny fixed LM (an embedding and a position table, weights saved) decoded greedily for 6 steps
  with their ``RollinProcessor.__call__`` on its logits (the HF greedy loop written out: processor, argmax,
  append), for 4 prompts and references with a fixed mask: the tokens;
* ``pg_loss``: their loss lines on 3 random cases (float64; one with ratios past both clip ends).
"""
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_code import extract  # noqa: E402

TRIL_COMMIT, DRPO_COMMIT = "045d036", "bd825df"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "drpo_golden.pt")
PG_FIRST = "pg_losses = -mb_advantage * ratio"
PG_LAST = "pg_loss = (torch.max(pg_losses, pg_losses2) * mb_rollin_masks.to(accelerator.device)).sum()/mb_rollin_masks.sum() # mask out rollins"
VOCAB, DIM = 12, 12


def tiny_lm(params):
    """logits[:, t] = emb[ids[:, t]] + pos[t] (the same model as the test's)."""
    def model(ids):
        return params["emb"][ids] + params["pos"][: ids.shape[1]]
    return model


def main():
    # stub the one transformers name tril's module needs
    tr = types.ModuleType("transformers")
    gen = types.ModuleType("transformers.generation")
    lp = types.ModuleType("transformers.generation.logits_process")
    lp.LogitsProcessor = object
    sys.modules.update({"transformers": tr, "transformers.generation": gen,
                        "transformers.generation.logits_process": lp})
    extract(os.environ["TRIL"], TRIL_COMMIT, ["src/tril/utils/logit_processors.py"], on_path=("src/tril/utils",))
    from logit_processors import RollinProcessor

    # 1. mask distribution
    rng = np.random.default_rng(217)
    lengths = [1, 2, 3, 5, 9]
    counts = {}
    rows_ok = True
    for beta in (1.0, 0.6, 0.0):
        seq = np.repeat(np.array(lengths), 4000)
        proc = RollinProcessor(np.zeros((len(seq), 10), dtype=np.int64), beta, rng, seq)
        m = proc.rollin_mask
        k = m.sum(1)
        rows_ok &= bool(all((m[i, :k[i]].all() and not m[i, k[i]:].any()) for i in range(len(seq))))
        counts[beta] = {L: np.bincount(k[seq == L], minlength=10).tolist() for L in lengths}
    # 2. forcing with a tiny LM, greedy
    g = torch.Generator().manual_seed(217)
    params = {"emb": torch.randn(VOCAB, VOCAB, generator=g), "pos": torch.randn(16, VOCAB, generator=g)}
    model = tiny_lm(params)
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    refs = torch.tensor([[9, 10, 11, 9, 10, 11], [4, 4, 4, 4, 4, 4], [2, 3, 2, 3, 2, 3], [11, 1, 0, 0, 0, 0]])
    proc = RollinProcessor(refs, 1.0, np.random.default_rng(0), np.array([6, 6, 6, 2]))
    proc.rollin_mask = np.array([[True, True, True, False, False, False], [False] * 6,
                                 [True, True, True, True, True, False], [True, False, False, False, False, False]])
    x = prompts.clone()
    for _ in range(6):
        scores = model(x)[:, -1].clone()
        scores = proc(x, scores)
        x = torch.cat([x, scores.argmax(-1)[:, None]], 1)
    forcing = {"params": params, "prompts": prompts, "refs": refs, "mask": torch.tensor(proc.rollin_mask),
               "tokens": x[:, prompts.shape[1]:]}
    # 3. their pg loss lines
    src = subprocess.run(["git", "-C", os.environ["DRPO"], "show", f"{DRPO_COMMIT}:src/tldr/drpo.py"], check=True,
                         capture_output=True, text=True).stdout
    lines = src.splitlines()
    i = next(k for k, l in enumerate(lines) if l.strip() == PG_FIRST)
    j = next(k for k in range(i, len(lines)) if lines[k].strip() == PG_LAST)
    code = compile(textwrap.dedent("\n".join(lines[i:j + 1])), "src/tldr/drpo.py:pg_loss", "exec")
    pg = []
    for case, (B, T, spread) in enumerate(((3, 5, 0.1), (4, 7, 1.0), (2, 4, 3.0))):
        new = torch.randn(B, T, generator=g, dtype=torch.float64) * spread - 1
        old = torch.randn(B, T, generator=g, dtype=torch.float64) * spread - 1
        adv = torch.randn(B, T, generator=g, dtype=torch.float64)
        rollin = torch.rand(B, T, generator=g) < 0.4
        rollin[0] = False
        ns = {"mb_advantage": adv, "ratio": torch.exp(new - old), "torch": torch, "mb_rollin_masks": ~rollin,
              "accelerator": types.SimpleNamespace(device="cpu"),
              "args": types.SimpleNamespace(ppo=types.SimpleNamespace(cliprange=0.2))}
        exec(code, ns)
        pg.append({"logps": new, "old_logps": old, "advantages": adv, "rollin": rollin, "loss": ns["pg_loss"]})
    torch.save({"commits": {"tril": TRIL_COMMIT, "drpo": DRPO_COMMIT}, "mask_counts": counts,
                "mask_rows_are_prefixes": rows_ok, "forcing": forcing, "pg_loss": pg}, OUT)
    print(f"wrote {OUT}; rows are prefixes: {rows_ok}; tokens {forcing['tokens'].tolist()}")


if __name__ == "__main__":
    main()
