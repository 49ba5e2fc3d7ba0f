"""Preference training throughput: gradwise's PreferenceTrainer vs TRL's DPOTrainer.

    PYTHONPATH=src python benchmarks/preference_step.py [--pairs-per-step 8] [--steps 40] [--warmup 3]
        [--block 5] [--vocab 1000] [--d-model 64] [--layers 2] [--threads N] [--markdown PATH] [--json PATH]

Needs TRL 1.16 (``pip install 'gradwise[trl]'``). Both trainers run in this one
process on the same tiny GPT-2 (built from a config; a word-level tokenizer
built in code), the same tokenized pairs in the same order (TRL's
tokenization, sequential sampling; PreferenceTrainer ``shuffle=False``), the
same batch size, sigmoid DPO loss with the same beta, the same separately
initialized frozen reference model (so the first loss is not just log 2),
torch AdamW with the same learning rate, gradient clipping at 1.0, float32
(TRL's bf16 and gradient-checkpointing defaults are turned off), reference
log-probs computed on the fly by both (the dataset has more pairs than the run
consumes, so PreferenceTrainer's reference cache never hits).

The first-batch losses must agree to 1e-5, else the script fails. Then TRL's
``trainer.train()`` runs; a callback times each of its optimizer steps (from
the end of the previous step to the end of this one, so data loading, the
step and TRL's bookkeeping are in) and, every ``--block`` TRL steps, runs
``--block`` PreferenceTrainer steps (timed the same way, from its own
callback), so both share the machine's noise. Throughput = pairs per step /
median step time. Peak memory: the rise of the process's peak resident set
(VmHWM, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) over
each trainer's first timed block, one trainer at a time: the transient memory
of its steps (activations, logits, gradients), not the resident models. Target:
PreferenceTrainer >= 1.3x TRL's pairs/second (PASS/MISS).
``--markdown PATH`` writes the section ``preference_step`` of that file.
"""
from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # harness.py sits beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402

TARGET = 1.3
LOSS_TOL = 1e-5


# --------------------------------------------------------------------------- setup

def build(args) -> dict:
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    words = [f"w{i}" for i in range(args.vocab - 3)]
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    rng = random.Random(args.seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    n = args.pairs_per_step * (args.warmup + args.steps) + args.pairs_per_step  # never wraps: no cache hits
    rows = [{"prompt": text(*args.prompt_words), "chosen": " " + text(*args.completion_words),
             "rejected": " " + text(*args.completion_words)} for _ in range(n)]
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=args.prompt_words[1] + args.completion_words[1] + 8,
                     n_embd=args.d_model, n_layer=args.layers, n_head=args.heads,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(args.seed)
    policy = GPT2LMHeadModel(cfg)
    torch.manual_seed(args.seed + 1)
    reference = GPT2LMHeadModel(cfg)
    return dict(tok=tok, ds=Dataset.from_list(rows), policy=policy, reference=reference, cfg=cfg)


def make_trl(env: dict, args, callback):
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    cfg = DPOConfig(output_dir=str(Path(args.tmp) / "trl"), per_device_train_batch_size=args.pairs_per_step,
                    max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                    max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"], bf16=False,
                    gradient_checkpointing=False, train_sampling_strategy="sequential", use_cpu=True,
                    report_to=[], save_strategy="no", disable_tqdm=True, seed=args.seed)
    model, ref = copy.deepcopy(env["policy"]), copy.deepcopy(env["reference"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    trainer = DPOTrainer(model, ref_model=ref, args=cfg, train_dataset=env["ds"], processing_class=env["tok"],
                         optimizers=(opt, None), callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # no printing of the logged metrics
    return trainer


def make_gradwise(env: dict, trl_trainer, args, callback):
    from gradwise.preference import PreferenceTrainer, dpo_loss

    # the very token ids TRL trains on (its tokenization, EOS appended), in its order
    ds = trl_trainer.train_dataset
    examples = [{"id": i, "prompt": p, "chosen": c, "rejected": r}
                for i, (p, c, r) in enumerate(zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))]
    model, ref = copy.deepcopy(env["policy"]), copy.deepcopy(env["reference"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    trainer = PreferenceTrainer(model, dpo_loss, opt, ref_model=ref, beta=args.beta,
                                batch_size=args.pairs_per_step, pad_token_id=env["tok"].pad_token_id,
                                max_grad_norm=1.0, shuffle=False, progress=False, callback=callback)
    return trainer, examples


# --------------------------------------------------------------------------- run

def run(args) -> dict:
    from transformers import TrainerCallback

    env = build(args)
    gw_times: list[float] = []
    trl_times: list[float] = []
    mem: dict[str, float | None] = {}
    state = {"gw_t": None, "trl_t": None, "trl_first_loss": None}

    def gw_callback(metrics: dict) -> None:
        t = time.perf_counter()
        gw_times.append(t - state["gw_t"])
        state["gw_t"] = t

    def gw_steps(k: int) -> None:
        state["gw_t"] = time.perf_counter()
        gw.train(gw_data, steps=gw.step + k)

    peak = harness.PeakRSS()

    class Interleave(TrainerCallback):
        def on_train_begin(self, a, s, c, **kw):
            state["trl_t"] = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            trl_times.append(time.perf_counter() - state["trl_t"])
            step = s.global_step
            if step == args.warmup:  # memory over TRL's first timed block
                peak.start()
            elif step == args.warmup + args.block:
                mem["trl"] = peak.stop()
            if step > args.warmup and (step - args.warmup) % args.block == 0:
                first = "gradwise" not in mem
                if first:  # and over gradwise's first timed block
                    peak.start()
                gw_steps(args.block)
                if first:
                    mem["gradwise"] = peak.stop()
            state["trl_t"] = time.perf_counter()  # callback work is not timed

    trl = make_trl(env, args, Interleave())
    gw, gw_data = make_gradwise(env, trl, args, gw_callback)

    # first-batch losses, recorded inside the real first training step of each trainer
    original = trl.compute_loss

    def first_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        out = original(model, inputs, return_outputs, num_items_in_batch)
        state["trl_first_loss"] = float((out[0] if isinstance(out, tuple) else out).detach())
        del trl.compute_loss  # back to the class method for every later step
        return out

    trl.compute_loss = first_loss

    gw_steps(args.warmup)
    gw_first = gw.history[0]["loss"]
    trl.train()
    missing = args.steps - (len(gw_times) - args.warmup)
    if missing > 0:  # steps not a multiple of block
        gw_steps(missing)
    trl_first = state["trl_first_loss"]
    diff = abs(gw_first - trl_first)
    if not diff <= LOSS_TOL:
        raise SystemExit(f"FAIL: first-batch losses differ: PreferenceTrainer {gw_first:.8f}, TRL DPOTrainer "
                         f"{trl_first:.8f} (|diff| {diff:.2e} > {LOSS_TOL:g}); the comparison is not like for like")

    gw_t, trl_t = gw_times[args.warmup:], trl_times[args.warmup:]
    B = args.pairs_per_step
    res_rows = []
    for name, ts in (("gradwise PreferenceTrainer", gw_t), ("TRL DPOTrainer", trl_t)):
        res_rows.append(dict(name=name, steps=len(ts), ms=1e3 * statistics.median(ts), times_s=ts,
                             pairs_per_s=B / statistics.median(ts), mean_pairs_per_s=B * len(ts) / sum(ts),
                             peak_mib=mem.get("gradwise" if name.startswith("gradwise") else "trl")))
    ratio = res_rows[0]["pairs_per_s"] / res_rows[1]["pairs_per_s"]
    n_params = sum(p.numel() for p in env["policy"].parameters())
    import transformers
    import trl as trl_pkg

    return dict(
        rows=res_rows, ratio=ratio, mean_ratio=res_rows[0]["mean_pairs_per_s"] / res_rows[1]["mean_pairs_per_s"],
        verdict="PASS" if ratio >= TARGET else "MISS", first_loss_gradwise=gw_first, first_loss_trl=trl_first,
        first_loss_diff=diff, last_loss_gradwise=gw.history[-1]["loss"], machine=harness.machine_description(),
        torch=torch.__version__, trl=trl_pkg.__version__, transformers=transformers.__version__,
        threads=torch.get_num_threads(), python=platform.python_version(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), loadavg_start=args.loadavg,
        loadavg_end=harness.load_average(), n_params=n_params, vocab=args.vocab, d_model=args.d_model,
        layers=args.layers, heads=args.heads, pairs_per_step=B, steps=args.steps, warmup=args.warmup,
        block=args.block, prompt_words=args.prompt_words, completion_words=args.completion_words,
        beta=args.beta, lr=args.lr, dataset_pairs=len(env["ds"]),
    )


def to_markdown(res: dict) -> str:
    pw, cw = res["prompt_words"], res["completion_words"]
    lines = [
        "## Preference training step",
        "",
        "Written by `python benchmarks/preference_step.py --markdown PATH` (needs `gradwise[trl]`); every number "
        "below is from that one run.",
        "",
        f"- Machine: {res['machine']}, device `cpu`; load average {res['loadavg_start']:.1f} at start, "
        f"{res['loadavg_end']:.1f} at end (other jobs shared the cores)",
        f"- Software: torch {res['torch']} ({res['threads']} thread{'s' if res['threads'] != 1 else ''}), "
        f"TRL {res['trl']}, transformers {res['transformers']}, Python {res['python']}",
        f"- Date: {res['date']}",
        f"- Workload: GPT-2 from a config ({res['layers']} layers, d_model {res['d_model']}, {res['heads']} heads, "
        f"vocab {res['vocab']}, {res['n_params']:,} parameters), a word-level tokenizer built in code; "
        f"{res['pairs_per_step']} pairs per step, prompts of {pw[0]}-{pw[1]} words, completions of {cw[0]}-{cw[1]} "
        "words (+EOS); sigmoid DPO, beta "
        f"{res['beta']:g}, a separately initialized frozen reference computed on the fly by both (no pair is seen "
        f"twice, so no reference cache hits), torch AdamW lr {res['lr']:g}, gradient clipping 1.0, float32 "
        "(TRL's bf16 and gradient-checkpointing defaults off), the same tokenized pairs in the same order",
        f"- Check: first-batch loss PreferenceTrainer {res['first_loss_gradwise']:.7f}, TRL "
        f"{res['first_loss_trl']:.7f} (|diff| {res['first_loss_diff']:.1e}, must be <= {LOSS_TOL:g})",
        f"- Method: {res['warmup']} warm-up steps each, then {res['steps']} timed steps each, interleaved in blocks "
        f"of {res['block']} (a TRL `train()` callback runs the PreferenceTrainer blocks); a step is timed from the "
        "end of the previous step to the end of this one (data collation, forward, backward, optimizer, "
        "bookkeeping); pairs/s = pairs per step / median step time",
        "- Peak memory: rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after "
        "malloc_trim) over each trainer's first timed block, one trainer at a time: what its steps allocate beyond "
        "the resident models and optimizer state",
        "",
        *harness.markdown_table(
            ("trainer", "median ms/step", "pairs/s (median)", "pairs/s (mean)", "peak RSS rise MiB"),
            ((r["name"], f"{r['ms']:.2f}", f"{r['pairs_per_s']:.1f}", f"{r['mean_pairs_per_s']:.1f}",
              "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}") for r in res["rows"])),
    ]
    lines += ["", f"- **{res['verdict']}** PreferenceTrainer / TRL DPOTrainer throughput: {res['ratio']:.2f}x "
                  f"(median; {res['mean_ratio']:.2f}x on means); target >= {TARGET}x"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs-per-step", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--prompt-words", type=int, nargs=2, default=(8, 24))
    p.add_argument("--completion-words", type=int, nargs=2, default=(8, 24))
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default="/tmp/gradwise-preference-bench")
    harness.add_output_args(p)
    args = p.parse_args(argv)
    for name in ("pairs_per_step", "steps", "block"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    harness.apply_threads(args.threads)
    args.loadavg = harness.load_average()
    try:
        import trl  # noqa: F401
    except ImportError:
        print("benchmarks/preference_step.py needs TRL: pip install 'gradwise[trl]'", file=sys.stderr)
        return 2
    res = run(args)
    for r in res["rows"]:
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f} MiB"
        print(f"{r['name']:28s} {r['ms']:8.2f} ms/step  {r['pairs_per_s']:8.1f} pairs/s (median)  "
              f"{r['mean_pairs_per_s']:8.1f} (mean)  peak RSS rise {mem}")
    print(f"first-batch loss: gradwise {res['first_loss_gradwise']:.7f}  TRL {res['first_loss_trl']:.7f}  "
          f"|diff| {res['first_loss_diff']:.1e}")
    print(f"throughput ratio gradwise/TRL: {res['ratio']:.2f}x (mean {res['mean_ratio']:.2f}x)  target >= {TARGET}x: "
          f"{res['verdict']}   load average {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f}")
    harness.save(res, args, "preference_step", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
