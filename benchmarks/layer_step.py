"""Layer step-time benchmark: forward + backward of gradwise layers vs the closest torch layer, same shapes.

    python benchmarks/layer_step.py [--t 128] [--b 32] [--c 256] [--heads 4] [--ff 1024] [--rounds 10]
                                    [--reps 3] [--threads N] [--markdown PATH] [--json PATH]

Each row pairs a gradwise layer with a peer (a torch layer, or another configuration of a gradwise layer) built at
one shape: sequence length T, batch B, width C (attention with ``--heads`` heads, MLP width ``--ff``). One "step" is
the layer's forward on fixed float32 inputs (requires_grad) and ``backward`` of a fixed random output gradient,
with parameter and input gradients cleared (untimed) before it. Every layer and peer is timed interleaved in one
process: after warm-up, each round runs every candidate ``--reps`` times, all shuffled together; the median over a
candidate's timings is reported with its ratio to its peer's median (and the paired ratio: median over rounds of the
per-round ratio). Target: ratio <= 1.3 (PASS/MISS). ``--markdown`` writes the section ``layer_step`` of that file.

A new layer is one ``Row`` in ``ROWS`` (and, if its peer is new, one entry in ``PEERS``).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 1.3


@dataclass(frozen=True)
class Shape:
    t: int = 128
    b: int = 32
    c: int = 256
    heads: int = 4
    ff: int = 1024


# A builder takes the shape and a generator and returns (module, inputs, call): the step is
# ``call(module, *inputs)`` followed by ``backward`` of a fixed output gradient.
Built = tuple[nn.Module, tuple[torch.Tensor, ...], Callable[..., torch.Tensor]]
Builder = Callable[[Shape, torch.Generator], Built]


def _seq(s: Shape, gen: torch.Generator, batch_first: bool = False) -> torch.Tensor:
    shape = (s.b, s.t, s.c) if batch_first else (s.t, s.b, s.c)
    return torch.randn(shape, generator=gen).requires_grad_(True)


def _pad_mask(s: Shape, gen: torch.Generator) -> torch.Tensor:
    """(B, T) True at padding: lengths uniform in [T/2, T], as bucketed NLP batches."""
    lengths = torch.randint(max(1, s.t // 2), s.t + 1, (s.b,), generator=gen)
    return torch.arange(s.t)[None, :] >= lengths[:, None]


def batchnorm1d(s, gen):
    return nn.BatchNorm1d(s.c), (torch.randn(s.t * s.b, s.c, generator=gen).requires_grad_(True),), \
        lambda m, x: m(x)


def power_norm(s, gen):
    from gradwise.nn import PowerNorm
    return PowerNorm(s.c), (_seq(s, gen),), lambda m, x: m(x)


def power_norm_padded(s, gen):
    from gradwise.nn import PowerNorm
    return PowerNorm(s.c), (_seq(s, gen), _pad_mask(s, gen)), lambda m, x, pad: m(x, pad_mask=pad)


def multihead_attention(s, gen):
    return nn.MultiheadAttention(s.c, s.heads), (_seq(s, gen),), \
        lambda m, x: m(x, x, x, need_weights=False)[0]


def qk_norm_attention(s, gen):
    from gradwise.nn import QKNormAttention
    return QKNormAttention(s.c, s.heads), (_seq(s, gen),), lambda m, x: m(x, x, x, need_weights=False)[0]


def transformer_block(norm: str) -> Builder:
    def build(s, gen):
        from gradwise.nn import TransformerBlock
        return TransformerBlock(s.c, s.heads, s.ff, norm=norm, causal=False), (_seq(s, gen, batch_first=True),), \
            lambda m, x: m(x)
    return build


def torch_encoder_layer(s, gen):
    # gelu and no dropout, as TransformerBlock's defaults; batch-first like it
    layer = nn.TransformerEncoderLayer(s.c, s.heads, s.ff, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return layer, (_seq(s, gen, batch_first=True),), lambda m, x: m(x)


def _mlp(s: Shape) -> nn.Sequential:
    return nn.Sequential(nn.Linear(s.c, s.ff), nn.GELU(), nn.Linear(s.ff, s.c))


def scaled_skip(s, gen):
    # the closest torch op to a constant-scaled skip: one multiply by a Python float
    return nn.Identity(), (_seq(s, gen, batch_first=True),), lambda m, x: m(x) * 0.125


def long_skip_scaling(mode: str) -> Builder:
    def build(s, gen):
        from gradwise.nn import LongSkipScaling
        # the deepest of 4 skips of a UViT-like net ([B, T, C] tokens): kappa^3 in CS mode
        return LongSkipScaling(4, features=s.t, mode=mode, reduction=min(16, s.t)), (_seq(s, gen, batch_first=True),), \
            lambda m, x: m(x, index=3)
    return build


def _hyper_target() -> nn.Sequential:
    # a hypernetwork predicts small nets: this one has 7.0k parameters
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def plain_hypernet(s, gen):
    # a plain MLP hypernetwork predicting the flat parameters of the target from 2 numbers, for a batch of 16
    n = sum(p.numel() for p in _hyper_target().parameters())
    net = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(), nn.Linear(64, 128), nn.LeakyReLU(), nn.Linear(128, n))
    return net, (torch.rand(16, 2, generator=gen),), lambda m, g: m(g)


def mip_hypernet(s, gen):
    from gradwise.nn import MIPHyperNet
    net = MIPHyperNet(_hyper_target(), input_size=2, hidden_sizes=[64, 128])
    return net, (torch.rand(16, 2, generator=gen),), lambda m, g: torch.cat([v.flatten(1) for v in m(g).values()], 1)


def plain_mlp(s, gen):
    return _mlp(s), (_seq(s, gen, batch_first=True),), lambda m, x: m(x)


def output_scale(center: bool) -> Builder:
    def build(s, gen):
        from gradwise.nn import OutputScale
        return OutputScale(_mlp(s), alpha=2.0, center=center), (_seq(s, gen, batch_first=True),), lambda m, x: m(x)
    return build


PEERS: dict[str, Builder] = {
    "x * constant": scaled_skip,
    "plain MLP hypernetwork": plain_hypernet,
    "the bare MLP": plain_mlp,
    "nn.BatchNorm1d on (T*B, C)": batchnorm1d,
    "nn.MultiheadAttention": multihead_attention,
    'TransformerBlock(norm="pre")': transformer_block("pre"),
    "nn.TransformerEncoderLayer(norm_first=True)": torch_encoder_layer,
}


@dataclass(frozen=True)
class Row:
    label: str
    peer: str  # a key of PEERS, or the label of another row
    build: Builder
    # False where the layer does more work than its peer by design (LS's calibration MLP, centering's second
    # forward): the ratio is reported, with no PASS/MISS
    like_for_like: bool = True


ROWS: list[Row] = [
    Row("PowerNorm", "nn.BatchNorm1d on (T*B, C)", power_norm),
    Row("PowerNorm with pad_mask", "nn.BatchNorm1d on (T*B, C)", power_norm_padded),
    Row("QKNormAttention", "nn.MultiheadAttention", qk_norm_attention),
    Row('TransformerBlock(norm="peri")', 'TransformerBlock(norm="pre")', transformer_block("peri")),
    Row('TransformerBlock(norm="post")', 'TransformerBlock(norm="pre")', transformer_block("post")),
    Row('TransformerBlock(norm="pre")', "nn.TransformerEncoderLayer(norm_first=True)", transformer_block("pre")),
    Row('LongSkipScaling(mode="cs"), one skip', "x * constant", long_skip_scaling("cs")),
    Row('LongSkipScaling(mode="ls"), one skip', "x * constant", long_skip_scaling("ls"), like_for_like=False),
    Row("MIPHyperNet (cos-sin encoding, additive)", "plain MLP hypernetwork", mip_hypernet),
    Row("OutputScale(center=False)", "the bare MLP", output_scale(False)),
    Row("OutputScale(center=True)", "the bare MLP", output_scale(True), like_for_like=False),
]


def candidate(label: str, build: Builder, shape: Shape, seed: int) -> harness.Candidate:
    gen = torch.Generator().manual_seed(seed)
    module, inputs, call = build(shape, gen)
    out = call(module, *inputs)
    gy = torch.randn(out.shape, generator=gen)
    leaves = [*module.parameters(), *(x for x in inputs if x.requires_grad)]

    def clear() -> None:
        for p in leaves:
            p.grad = None

    return harness.Candidate(label, lambda: call(module, *inputs).backward(gy), clear, obj=module)


def run(shape: Shape, rounds: int, reps: int, warmup: int = 3, seed: int = 0,
        rows: list[Row] | None = None) -> dict:
    rows = ROWS if rows is None else rows
    builders = {r.label: r.build for r in rows}
    notes: list[str] = []
    for r in rows:
        if r.peer not in builders:
            if r.peer not in PEERS:
                raise ValueError(f"Invalid peer of row {r.label!r}: {r.peer!r} (accepted: a key of PEERS or a row)")
            builders[r.peer] = PEERS[r.peer]
    cands = {}
    for i, (label, build) in enumerate(builders.items()):
        try:
            cands[label] = candidate(label, build, shape, seed + i)
        except Exception as exc:  # noqa: BLE001 - a layer that cannot be built is reported, the others run
            notes.append(f"{label}: could not be built ({type(exc).__name__}: {exc})")
    load = harness.load_average()
    if harness.busy_note(load):
        notes.append(harness.busy_note(load))
    harness.interleave(cands, rounds=rounds, steps=reps, warmup=warmup, seed=seed, mode="shuffled", notes=notes)
    med = {k: statistics.median(c.samples_ms) for k, c in cands.items() if not c.error and c.samples_ms}
    out_rows = []
    for r in rows:
        ms, peer_ms = med.get(r.label), med.get(r.peer)
        ratio = harness.ratio(ms, peer_ms)
        out_rows.append(dict(name=r.label, peer=r.peer, ms=ms, peer_ms=peer_ms, ratio=ratio,
                             paired=harness.paired_ratio(cands.get(r.label), cands.get(r.peer)),
                             verdict="" if ratio is None else "more work" if not r.like_for_like else
                             ("PASS" if ratio <= TARGET else "MISS")))
    return dict(rows=out_rows, notes=notes, shape=vars(shape), rounds=rounds, reps=reps, warmup=warmup,
                machine=harness.machine_description(), torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                loadavg=load)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(res: dict) -> str:
    s = res["shape"]
    lines = [
        "## Layer step time",
        "",
        "Written by `python benchmarks/layer_step.py --markdown PATH`; every number below is from that one run.",
        "",
        f"- Machine: {res['machine']}, device `cpu`",
        f"- Software: torch {res['torch']} ({res['threads']} threads), Python {res['python']}",
        f"- Date: {res['date']}; load average at start: {res['loadavg']:.1f}" if res["loadavg"] is not None
        else f"- Date: {res['date']}",
        f"- Workload: float32, T={s['t']}, B={s['b']}, C={s['c']} (attention: {s['heads']} heads, MLP width "
        f"{s['ff']}); sequence layers take (T, B, C) or batch-first (B, T, C) as they expect, BatchNorm1d the "
        "same T*B tokens as (T*B, C); ScaleLong scales one (B, T, C) skip, OutputScale wraps an MLP C-ff-C on "
        "(B, T, C), MIPHyperNet predicts a 7.0k-parameter MLP from 16 points of [0,1]^2; one step = forward + "
        "backward of a fixed output gradient",
        f"- Method: {res['warmup']} warm-up rounds, then {res['rounds']} rounds x {res['reps']} steps of every "
        "layer in shuffled order; median ms/step; ratio = median / the peer's median, paired = median over rounds "
        f"of the per-round ratio; target <= {TARGET} (PASS/MISS); \"more work\": the layer does more than its "
        "peer by design (ScaleLong LS: a pooled calibration MLP; centered OutputScale: a second forward at the "
        "initial parameters), no target",
        "",
        *harness.markdown_table(
            ("layer", "ms", "peer", "peer ms", "ratio", "paired", "target"),
            ((r["name"], _fmt(r["ms"], ".2f"), r["peer"], _fmt(r["peer_ms"], ".2f"), _fmt(r["ratio"], ".2f"),
              _fmt(r["paired"], ".2f"), r["verdict"]) for r in res["rows"]),
            left=(0, 2, 6)),
    ]
    for note in res["notes"]:
        lines += ["", f"Note: {note}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        harness.reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Shape()
    p.add_argument("--t", type=int, default=d.t)
    p.add_argument("--b", type=int, default=d.b)
    p.add_argument("--c", type=int, default=d.c)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--ff", type=int, default=d.ff)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--note", action="append", default=[], help="a note to print under the table (repeatable)")
    harness.add_output_args(p)
    args = p.parse_args(argv)
    harness.apply_threads(args.threads)
    res = run(Shape(args.t, args.b, args.c, args.heads, args.ff), args.rounds, args.reps)
    res["notes"] += args.note
    for r in res["rows"]:
        print(f"{r['name']:40s} {_fmt(r['ms'], '8.2f')} ms  vs {r['peer']:45s} {_fmt(r['peer_ms'], '8.2f')} ms  "
              f"x{_fmt(r['ratio'], '.2f')} (paired x{_fmt(r['paired'], '.2f')})  {r['verdict']}")
    for note in res["notes"]:
        print("note:", note)
    harness.save(res, args, "layer_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
