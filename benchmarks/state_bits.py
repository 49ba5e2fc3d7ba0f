"""8-bit optimizer state (issue 12): state bytes, step time and loss parity of AdamW with 8-bit state, in one run.

    python benchmarks/state_bits.py [--rounds N] [--steps N] [--lm-steps N] [--seeds N] [--threads N]
                                    [--markdown PATH] [--json PATH]

Three measurements, side by side in one process:

* **state bytes**: every optimizer steps once on its own copy of one model (a ``gradwise.nn.TransformerLM``,
  width 256, 4 blocks, 512-token vocabulary: 3.4M parameters, almost all in tensors of 65k entries or more) with
  the same gradients; then every tensor its state holds is counted (:func:`state_bytes`): bitsandbytes'
  ``state1/state2`` codes, ``absmax1/absmax2`` and ``qmap1/qmap2``; the inner tensors (``codes``, ``scale``,
  ``qmap``) of torchao's ``OptimState8bit`` tensor subclass, not its outer float32 shape; gradwise's stored
  ``(codes, absmax)`` pairs and its codec's quantization maps. A storage shared by several entries (bitsandbytes'
  ``qmap1`` is one tensor for all parameters) is counted once. Ratio to gradwise AdamW with 32-bit state; target
  <= 0.27x for 8-bit state (the paper's 75% saving, plus the block maxima);
* **step time**: the same optimizers, on the same model and gradients (restored untimed before every step),
  timed by the harness (warm-up, interleaved shuffled rounds, medians); ratio to the faster of bitsandbytes' and
  torchao's ``AdamW8bit``; target <= 1.0x. gradwise's 8-bit AdamW is timed at its default (``fused`` path:
  whatever kernel the optimizer picks) and with ``fused=False`` (the ``torch._foreach_`` reference path);
* **loss parity**: a character-level ``TransformerLM`` (width 64, 4 blocks: every block tensor has >= 4096
  entries, so its state is 8-bit) trained on the synthetic language of the arena's lr-sensitivity study with
  gradwise AdamW at 32-bit and at 8-bit state, and bitsandbytes' AdamW8bit for reference, over ``--seeds`` seeds;
  the held-out loss at the end per seed and its gap to 32-bit; target: within 1% on every seed.

All optimizers take lr 1e-3 (parity run: ``--lm-lr`` with linear warm-up and cosine decay), betas (0.9, 0.999),
eps 1e-8, weight decay 1e-2 (bitsandbytes' and torchao's AdamW8bit defaults). A peer that is not installed is
skipped with a note. ``--markdown`` writes the section ``state_bits`` of that file.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

__all__ = ["OPTIMIZERS", "LM_OPTIMIZERS", "Model", "LMConfig", "state_bytes", "state_tensors", "eight_bit_fraction",
           "measure_bytes", "time_steps", "loss_parity", "targets", "run", "to_markdown", "main"]

BYTES_TARGET = 0.27   # 8-bit state / gradwise 32-bit state, Adam-type
SPEED_TARGET = 1.0    # gradwise 8-bit step / the faster of bitsandbytes' and torchao's AdamW8bit
PARITY_TARGET = 0.01  # |final loss (8-bit) / final loss (32-bit) - 1|, every seed

HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

Builder = Callable[..., torch.optim.Optimizer]


def _gradwise(**kw: Any) -> Builder:
    def build(params, **hyper):
        from gradwise.optim import AdamW

        return AdamW(params, **{**HYPER, **hyper, **kw})
    return build


def _bnb(params, **hyper):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, **{**HYPER, **hyper})


def _torchao(params, **hyper):
    from torchao.optim import AdamW8bit

    return AdamW8bit(params, **{**HYPER, **hyper})


# label -> (builder, the package it needs, bits of its state)
OPTIMIZERS: dict[str, tuple[Builder, str, int]] = {
    "torch.optim.AdamW(fused=True)": (lambda ps, **h: torch.optim.AdamW(ps, **{**HYPER, **h}, fused=True),
                                      "torch", 32),
    "gradwise AdamW": (_gradwise(), "gradwise", 32),
    "gradwise AdamW(state_bits=8)": (_gradwise(state_bits=8), "gradwise", 8),
    "gradwise AdamW(state_bits=8, fused=False)": (_gradwise(state_bits=8, fused=False), "gradwise", 8),
    "bnb.optim.AdamW8bit": (_bnb, "bitsandbytes", 8),
    "torchao.optim.AdamW8bit": (_torchao, "torchao", 8),
}
GW32, GW8, GW8_REF = "gradwise AdamW", "gradwise AdamW(state_bits=8)", "gradwise AdamW(state_bits=8, fused=False)"
PEERS8 = ("bnb.optim.AdamW8bit", "torchao.optim.AdamW8bit")
LM_OPTIMIZERS = (GW32, GW8, "bnb.optim.AdamW8bit")


def _available(package: str) -> bool:
    return package in ("torch", "gradwise") or harness.package_version(package) is not None


# ---------------------------------------------------------------------------
# Counting state bytes
# ---------------------------------------------------------------------------


def _leaves(x: Any) -> Iterable[torch.Tensor]:
    """The plain tensors in ``x``: through tuples, lists and dicts, and into a tensor subclass's inner tensors."""
    if isinstance(x, torch.Tensor):
        flatten = getattr(type(x), "__tensor_flatten__", None)
        if flatten is not None and type(x) is not torch.nn.Parameter:
            names, _ = x.__tensor_flatten__()  # torchao's OptimState8bit: codes, scale, qmap
            for name in names:
                yield from _leaves(getattr(x, name))
        else:
            yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _leaves(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)


def state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every plain tensor an optimizer keeps for its state: ``opt.state``'s, and a gradwise codec's maps."""
    found = list(_leaves(list(opt.state.values())))
    codec = getattr(opt, "state_codec", None)
    if codec is not None:  # gradwise keeps the quantization maps in the codec, once per device
        found += list(_leaves(vars(codec)))
    return found


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (:func:`state_tensors`), each storage counted once."""
    seen: dict[tuple[int, int], int] = {}
    for t in state_tensors(opt):
        st = t.untyped_storage()
        seen[(t.device.index or 0, st.data_ptr())] = max(seen.get((t.device.index or 0, st.data_ptr()), 0),
                                                          st.nbytes())
    return sum(seen.values())


def eight_bit_fraction(opt: torch.optim.Optimizer) -> float:
    """Share of the parameters' entries whose state holds 8-bit codes (uint8 tensors)."""
    total = eight = 0
    for group in opt.param_groups:
        for p in group["params"]:
            total += p.numel()
            if any(t.dtype == torch.uint8 for t in _leaves(opt.state.get(p, {}))):
                eight += p.numel()
    return eight / total if total else 0.0


# ---------------------------------------------------------------------------
# The model of the bytes and time measurements
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """The TransformerLM whose parameters are stepped: shapes only matter (one backward gives the gradients)."""

    vocab: int = 512
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    seq_len: int = 128
    batch: int = 8


def make_params(model: Model, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The model's parameters and the gradients of one batch of random tokens (float32)."""
    from gradwise.nn import TransformerLM

    torch.manual_seed(seed)
    lm = TransformerLM(model.vocab, model.d_model, model.n_heads, model.n_layers, model.seq_len)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab, (model.batch, model.seq_len + 1), generator=gen)
    F.cross_entropy(lm(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    params = [p.detach().clone() for p in lm.parameters()]
    grads = [p.grad.detach().clone() for p in lm.parameters()]
    return params, grads


def _fresh(params0: list[torch.Tensor], grads0: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    for p, g in zip(params, grads0):
        p.grad = g.clone()
    return params


def _labels(notes: list[str], only: Sequence[str] | None = None) -> list[str]:
    if only is not None:
        unknown = [label for label in only if label not in OPTIMIZERS]
        if unknown:
            raise ValueError(f"Invalid optimizer label(s): {', '.join(map(repr, unknown))} "
                             f"(accepted: {', '.join(OPTIMIZERS)})")
    out = []
    for label, (_, package, _) in OPTIMIZERS.items():
        if only is not None and label not in only:
            continue
        if _available(package):
            out.append(label)
        elif f"{package} not importable" not in " ".join(notes):
            notes.append(f"{package} not importable: its optimizer is not measured")
    return out


def measure_bytes(params0, grads0, labels: Sequence[str], notes: list[str]) -> list[dict[str, Any]]:
    """One step of each optimizer on a fresh copy; its state bytes, bytes per parameter and 8-bit share."""
    n = sum(p.numel() for p in params0)
    rows = []
    for label in labels:
        build, _, bits = OPTIMIZERS[label]
        try:
            opt = build(_fresh(params0, grads0))
            opt.step()
        except Exception as exc:  # noqa: BLE001 - report, don't crash the whole benchmark
            notes.append(f"{label}: could not step ({type(exc).__name__}: {exc})")
            continue
        b = state_bytes(opt)
        rows.append({"name": label, "bits": bits, "bytes": b, "bytes_per_param": b / n,
                     "eight_bit_fraction": eight_bit_fraction(opt)})
    base = next((r["bytes"] for r in rows if r["name"] == GW32), None)
    for r in rows:
        r["ratio_gw32"] = harness.ratio(r["bytes"], base)
    return rows


def time_steps(params0, grads0, labels: Sequence[str], notes: list[str], *, rounds: int, steps: int, warmup: int,
               seed: int = 0, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Median step time of each optimizer (harness: warm-up, then interleaved shuffled rounds)."""
    cands: dict[str, harness.Candidate] = {}
    for label in labels:
        params = _fresh(params0, grads0)
        try:
            opt = OPTIMIZERS[label][0](params)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{label}: construction failed ({type(exc).__name__}: {exc})")
            continue

        def prepare(params=params):  # some optimizers may rewrite p.grad: the inputs must not drift
            torch._foreach_copy_([p.grad for p in params], grads0)

        cands[label] = harness.Candidate(label, opt.step, prepare, obj=opt)
    harness.interleave(cands, rounds=rounds, steps=steps, warmup=warmup, seed=seed, mode="blocks", notes=notes,
                       progress=progress)
    st = {label: harness.stats(c.samples_ms) for label, c in cands.items() if not c.error}
    med = {label: s["median_ms"] for label, s in st.items() if s}
    peers = {k: med[k] for k in PEERS8 if k in med}
    best = min(peers, key=peers.get) if peers else None
    rows = []
    for label in labels:
        if label not in cands:
            continue
        rows.append({"name": label, "ms": med.get(label), "spread": (st.get(label) or {}).get("spread"),
                     "ratio_best_peer": harness.ratio(med.get(label), peers.get(best)) if best else None,
                     "paired_best_peer": harness.paired_ratio(cands[label], cands.get(best)) if best else None,
                     "best_peer": best})
    return rows


# ---------------------------------------------------------------------------
# Loss parity on a tiny LM
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LMConfig:
    """The parity run: a char-level TransformerLM on the lr-sensitivity study's synthetic language."""

    steps: int = 200
    seeds: int = 3
    lr: float = 3e-3
    warmup_fraction: float = 0.1
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    seq_len: int = 32
    batch_size: int = 16
    train_chars: int = 200_000
    eval_windows: int = 64
    text_seed: int = 0


def _task(cfg: LMConfig):
    from gradwise.arena import lr_sensitivity_study as lrs

    return lrs.TextTask(dataclasses.replace(lrs.Config(), train_chars=cfg.train_chars, text_seed=cfg.text_seed,
                                            eval_windows=cfg.eval_windows, seq_len=cfg.seq_len))


def train_lm(task, cfg: LMConfig, label: str, seed: int) -> dict[str, Any]:
    """One run: held-out loss at the end, the training-loss curve, the share of parameters with 8-bit state."""
    from gradwise.arena.lr_sensitivity_study import held_out_loss
    from gradwise.nn import TransformerLM

    torch.manual_seed(seed)
    model = TransformerLM(len(task.chars), cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.seq_len, norm="pre")
    opt = OPTIMIZERS[label][0](list(model.parameters()), lr=cfg.lr)
    warm = max(1, round(cfg.warmup_fraction * cfg.steps))

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 0.1 of the peak
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    n = len(task.train) - cfg.seq_len - 1
    curve = []
    for _ in range(cfg.steps):
        starts = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        window = torch.stack([task.train[s:s + cfg.seq_len + 1] for s in starts.tolist()])
        loss = F.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(loss.item())
    return {"final_loss": held_out_loss(model, task), "curve": curve, "eight_bit_fraction": eight_bit_fraction(opt),
            "params": sum(p.numel() for p in model.parameters())}


def loss_parity(cfg: LMConfig, labels: Sequence[str], notes: list[str],
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every optimizer of ``labels`` (among :data:`LM_OPTIMIZERS`) on every seed; gaps to gradwise 32-bit."""
    say = progress or (lambda _msg: None)
    task = _task(cfg)
    runs: dict[str, list[dict[str, Any]]] = {}
    for label in (lb for lb in LM_OPTIMIZERS if lb in labels):
        for seed in range(cfg.seeds):
            say(f"LM: {label}, seed {seed}")
            try:
                runs.setdefault(label, []).append(train_lm(task, cfg, label, seed))
            except Exception as exc:  # noqa: BLE001
                notes.append(f"LM {label} seed {seed}: failed ({type(exc).__name__}: {exc})")
                runs.pop(label, None)
                break
    base = runs.get(GW32)
    rows = []
    for label, rs in runs.items():
        finals = [r["final_loss"] for r in rs]
        gaps = ([f / b["final_loss"] - 1 for f, b in zip(finals, base)] if base and label != GW32 else None)
        rows.append({"name": label, "final_loss": finals, "mean": statistics.fmean(finals), "gap": gaps,
                     "max_abs_gap": max(abs(g) for g in gaps) if gaps else None,
                     "eight_bit_fraction": rs[0]["eight_bit_fraction"],
                     "curve_every_50": [r["curve"][::50] + [r["curve"][-1]] for r in rs]})
    params = next(iter(runs.values()))[0]["params"] if runs else None
    return {"config": dataclasses.asdict(cfg), "rows": rows, "params": params, "vocab": len(task.chars)}


# ---------------------------------------------------------------------------
# Targets, run, output
# ---------------------------------------------------------------------------


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["name"] == name), None)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The three targets of issue 12, each with its value, limit, PASS/MISS/n/a and a plain-words line."""
    out = []
    b = _row(res["bytes"], GW8)
    v = b["ratio_gw32"] if b else None
    out.append({"target": f"state bytes of gradwise 8-bit AdamW <= {BYTES_TARGET}x its 32-bit state", "value": v,
                "limit": BYTES_TARGET, "status": "n/a" if v is None else "PASS" if v <= BYTES_TARGET else "MISS"})
    t = _row(res["time"], GW8)
    v = t["ratio_best_peer"] if t else None
    peer = t["best_peer"] if t else None
    out.append({"target": f"step time of gradwise 8-bit AdamW <= {SPEED_TARGET}x the faster 8-bit peer"
                          + (f" ({peer})" if peer else ""),
                "value": v, "limit": SPEED_TARGET,
                "status": "n/a" if v is None else "PASS" if v <= SPEED_TARGET else "MISS"})
    p = _row(res["parity"]["rows"], GW8) if res.get("parity") else None
    v = p["max_abs_gap"] if p else None
    out.append({"target": f"final loss of 8-bit within {PARITY_TARGET:.0%} of 32-bit on every seed", "value": v,
                "limit": PARITY_TARGET, "status": "n/a" if v is None else "PASS" if v <= PARITY_TARGET else "MISS"})
    return out


def run(*, model: Model = Model(), lm: LMConfig | None = LMConfig(), rounds: int = 10, steps: int = 3,
        warmup: int = 3, seed: int = 0, threads: int | None = None, only: Sequence[str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All three measurements (``lm=None`` skips the parity run); a JSON-ready dict.

    ``only``: the labels of :data:`OPTIMIZERS` to measure (default: all whose package is installed).
    """
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"steps and rounds must be >= 1 and warmup >= 0, got {steps}, {rounds}, {warmup}")
    harness.apply_threads(threads)
    say = progress or (lambda _msg: None)
    notes: list[str] = []
    load = harness.load_average()
    if harness.busy_note(load):
        notes.append(harness.busy_note(load))
    t0 = time.perf_counter()
    labels = _labels(notes, only)
    params0, grads0 = make_params(model, seed)
    say(f"{len(labels)} optimizers, {len(params0)} tensors, {sum(p.numel() for p in params0) / 1e6:.2f}M parameters")
    res: dict[str, Any] = {
        "machine": harness.machine_info("cpu", load, versions=("bitsandbytes", "torchao")),
        "config": {"model": dataclasses.asdict(model), "tensors": len(params0),
                   "parameters": sum(p.numel() for p in params0), "rounds": rounds, "steps": steps,
                   "warmup": warmup, "seed": seed, "hyper": {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in HYPER.items()}},
        "bytes": measure_bytes(params0, grads0, labels, notes),
        "time": time_steps(params0, grads0, labels, notes, rounds=rounds, steps=steps, warmup=warmup, seed=seed,
                           progress=say),
        "parity": loss_parity(lm, labels, notes, say) if lm is not None else None,
        "notes": notes,
    }
    res["targets"] = targets(res)
    res["seconds"] = time.perf_counter() - t0
    return res


def _f(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def _target_lines(res: dict[str, Any]) -> list[str]:
    lines = []
    for t in res["targets"]:
        if t["value"] is None:
            lines.append(f"**n/a** {t['target']}: not measured")
            continue
        val = f"{t['value']:.2%}" if "loss" in t["target"] else f"{t['value']:.3f}x"
        words = "met" if t["status"] == "PASS" else f"missed: measured {val}, limit {t['limit']:g}"
        lines.append(f"**{t['status']}** {t['target']}: {val} ({words})")
    return lines


def to_markdown(res: dict[str, Any], device_note: str | None = None) -> str:
    m, c = res["machine"], res["config"]
    md = c["model"]
    lines = [
        "## 8-bit optimizer state",
        "",
        "Written by `python benchmarks/state_bits.py --markdown docs/benchmarks.md` (issue 12); every number below "
        f"is from that one run ({res['seconds']:.0f} s). The state-bytes, step-time and loss-parity measurements of "
        "AdamW with 8-bit block-wise state (`gradwise.optim.AdamW(state_bits=8)`) beside 32-bit AdamW and the "
        "8-bit AdamW of bitsandbytes and torchao, in one process.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, device `cpu`",
        f"- Software: torch {m['torch']} ({m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}), "
        f"bitsandbytes {m['bitsandbytes']}, torchao {m['torchao']}, Python {m['python']}",
        f"- Date: {m['date']}; load average at start: " + _f(m["load_average"], ".1f"),
        f"- Model (bytes and time): `TransformerLM(vocab={md['vocab']}, d_model={md['d_model']}, "
        f"n_heads={md['n_heads']}, n_layers={md['n_layers']}, max_seq_len={md['seq_len']})`, {c['tensors']} "
        f"tensors, {c['parameters']:,} float32 parameters, the gradients of one batch; all optimizers at lr 1e-3, "
        "betas (0.9, 0.999), eps 1e-8, weight decay 1e-2",
        "",
        "### State bytes after one step",
        "",
        "Every tensor in `optimizer.state` (codes, block maxima, quantization maps; the inner `codes`/`scale`/"
        "`qmap` of torchao's `OptimState8bit` subclass; gradwise's codec maps: its signed and unsigned 256-entry "
        "maps and their 65,536-entry uint8 lookup tables, 130 KiB once per optimizer and device), each storage "
        "counted once. 8-bit state is 1 byte per entry plus one float32 per block of 256 entries (0.254x of "
        "float32); the parameters under 4,096 entries (biases, norms) keep float32 state in all three 8-bit "
        "optimizers.",
        "",
        *harness.markdown_table(
            ("optimizer", "state bits", "state MiB", "bytes / param", "x gradwise 32-bit", "params with 8-bit state"),
            ((r["name"], str(r["bits"]), f"{r['bytes'] / 2**20:.2f}", f"{r['bytes_per_param']:.3f}",
              _f(r["ratio_gw32"], ".3f"), f"{r['eight_bit_fraction']:.1%}") for r in res["bytes"])),
        "",
        "### Step time",
        "",
        f"{c['warmup']} warm-up steps, then {c['rounds']} rounds x {c['steps']} steps of every optimizer in shuffled "
        "order, gradients restored (untimed) before each step; median ms per `step()`; ratio to the faster of "
        "bitsandbytes' and torchao's AdamW8bit (paired: median over rounds of the per-round ratio). "
        "`fused=False` is gradwise's `torch._foreach_` reference path (decode, update, encode); the default is "
        "whatever the optimizer runs by default on CPU.",
        "",
        *harness.markdown_table(
            ("optimizer", "ms / step", "spread", "x faster 8-bit peer", "paired"),
            ((r["name"], _f(r["ms"]), _f(r["spread"]), _f(r["ratio_best_peer"]), _f(r["paired_best_peer"]))
             for r in res["time"])),
    ]
    par = res.get("parity")
    if par:
        pc = par["config"]
        lines += [
            "",
            "### Loss parity on a tiny LM",
            "",
            f"Character-level `TransformerLM(d_model={pc['d_model']}, n_heads={pc['n_heads']}, "
            f"n_layers={pc['n_layers']}, max_seq_len={pc['seq_len']}, norm=\"pre\")`, {par['params']:,} parameters, "
            f"vocabulary {par['vocab']}, on the synthetic language of the lr-sensitivity study "
            f"({pc['train_chars']:,} characters); {pc['steps']} steps of batch {pc['batch_size']}, peak lr "
            f"{pc['lr']:g} with {pc['warmup_fraction']:.0%} linear warm-up and cosine decay to 0.1x; final loss = "
            f"mean cross-entropy on {pc['eval_windows']} held-out windows; gap = final loss / gradwise 32-bit's - 1, "
            "same seed (same initial weights and batches).",
            "",
            *harness.markdown_table(
                ("optimizer", "params with 8-bit state",
                 *(f"seed {s}" for s in range(pc["seeds"])), "mean", "gap per seed", "largest gap (abs)"),
                ((r["name"], f"{r['eight_bit_fraction']:.1%}", *(f"{v:.4f}" for v in r["final_loss"]),
                  f"{r['mean']:.4f}", ", ".join(f"{g:+.2%}" for g in r["gap"]) if r["gap"] else "—",
                  _f(r["max_abs_gap"], ".2%")) for r in par["rows"])),
        ]
    lines += ["", "Targets (issue 12):", ""] + [f"- {t}" for t in _target_lines(res)]
    if device_note:
        lines += ["", device_note]
    if res["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


NO_DEVICE = ("Device run: no GPU was lent to the session that ran this benchmark, so the device run of issue 12 "
             "(this benchmark on an accelerator) is not done; every number above is from the CPU named.")


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        harness.reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per optimizer per round (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    p.add_argument("--lm-steps", type=int, default=LMConfig.steps, help="parity run: training steps (default 200)")
    p.add_argument("--seeds", type=int, default=LMConfig.seeds, help="parity run: seeds (default 3)")
    p.add_argument("--lm-lr", type=float, default=LMConfig.lr, help="parity run: peak learning rate (default 3e-3)")
    p.add_argument("--no-lm", action="store_true", help="skip the parity run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", action="append", default=[], help="a note to print under the tables (repeatable)")
    p.add_argument("--device-note", default=NO_DEVICE, help="the line on the device run (default: none was lent)")
    harness.add_output_args(p)
    p.set_defaults(threads=1)  # one thread: steadier on a shared machine, and the same for every optimizer
    args = p.parse_args(argv)

    def progress(msg: str) -> None:
        print(f"[state_bits] {msg}", flush=True)

    lm = None if args.no_lm else LMConfig(steps=args.lm_steps, seeds=args.seeds, lr=args.lm_lr)
    res = run(lm=lm, rounds=args.rounds, steps=args.steps, warmup=args.warmup, seed=args.seed, threads=args.threads,
              progress=progress)
    res["notes"] += args.note
    for r in res["bytes"]:
        print(f"{r['name']:45s} {r['bytes'] / 2**20:8.2f} MiB  x{_f(r['ratio_gw32'], '.3f')} of gradwise 32-bit  "
              f"8-bit share {r['eight_bit_fraction']:.1%}")
    for r in res["time"]:
        print(f"{r['name']:45s} {_f(r['ms'], '8.2f')} ms/step  x{_f(r['ratio_best_peer'])} of {r['best_peer']}")
    for r in (res["parity"] or {}).get("rows", []):
        print(f"{r['name']:45s} final loss {', '.join(f'{v:.4f}' for v in r['final_loss'])}  "
              f"max |gap| {_f(r['max_abs_gap'], '.2%')}")
    for line in _target_lines(res):
        print(line.replace("**", ""))
    for n in res["notes"]:
        print("note:", n)
    harness.save(res, args, "state_bits", to_markdown(res, args.device_note))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
