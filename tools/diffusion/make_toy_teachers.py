"""Train the toy teachers of gradwise.diffusion.toy and cache them in tests/data/diffusion_toy_teachers.pt.

Usage (from the repository root; one torch thread, CPU):

    PYTHONPATH=src .venv/bin/python tools/diffusion/make_toy_teachers.py [--out PATH] [--seed 0]

Trains, with the recipes of ``gradwise.diffusion.toy.TEACHERS`` (``train_teacher(name, seed=seed)``):
``"mixture"`` (class-conditional EDM denoiser of the unequal-weight 8-mode mixture), ``"digits"``
(class-conditional EDM denoiser of the 8x8 digits' train split) and ``"classifier"`` (the digits classifier).
Saves ``{name: {"state_dict": float32 state dict, "config": the recipe, "seconds": training wall time,
"cpu_seconds": its CPU time}}`` plus
``"torch"`` (the version), prints the training times and the checks the tests make (classifier test accuracy;
teacher sample quality), and loads the file back with ``load_teacher``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gradwise.diffusion.toy import (MIXTURE_TEACHER_WEIGHTS, TEACHER_FILE, TEACHERS, digits_8x8, edm_sample,
                                    energy_distance, feature_frechet, load_teacher, mixture_2d,
                                    mixture_2d_centers, mode_recall, train_teacher)


def report(path: Path) -> None:
    clf = load_teacher("classifier", path)
    x_test, y_test = digits_8x8("test")
    with torch.no_grad():
        print(f"classifier test accuracy {(clf(x_test).argmax(1) == y_test).double().mean().item():.4f}")
    g = torch.Generator().manual_seed(0)
    mix = load_teacher("mixture", path)
    data, _ = mixture_2d(1000, weights=MIXTURE_TEACHER_WEIGHTS, generator=g)
    x = edm_sample(mix, torch.randn(1000, 2, generator=g), steps=18)
    centers = mixture_2d_centers()
    near = torch.cdist(x, centers).min(1).values
    print(f"mixture: energy distance {energy_distance(x, data).item():.5f}, mode recall "
          f"{mode_recall(x, centers, MIXTURE_TEACHER_WEIGHTS, 0.25).item():.3f}, within 0.25 of a centre "
          f"{(near <= 0.25).double().mean().item():.3f}")
    dig = load_teacher("digits", path)
    labels = torch.arange(200) % 10
    x = edm_sample(dig, torch.randn(200, 1, 8, 8, generator=g), steps=18, class_labels=labels)
    with torch.no_grad():
        acc = (clf(x).argmax(1) == labels).double().mean().item()
    print(f"digits: classifier accuracy of conditional samples {acc:.3f}, feature Frechet to test "
          f"{feature_frechet(clf, x, x_test[:200]).item():.3f} (test vs test "
          f"{feature_frechet(clf, x_test[200:400], x_test[:200]).item():.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEACHER_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(TEACHERS), action="append",
                        help="retrain only these teachers, keeping the others of --out (each teacher's training "
                             "is independent of the others', so the file is the same as a full run's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.only or list(TEACHERS)
    cache = torch.load(args.out, weights_only=True) if args.only else {}
    cache["torch"] = str(torch.__version__)
    for name in names:
        start, cpu_start = time.perf_counter(), time.process_time()
        model = train_teacher(name, seed=args.seed)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"{name}: trained in {seconds:.1f} s wall, {cpu:.1f} s CPU (one thread: the wall time of an idle core)")
        cache[name] = {"state_dict": {k: v.detach().float().clone() for k, v in model.state_dict().items()},
                       "config": repr(TEACHERS[name]), "seconds": seconds, "cpu_seconds": cpu}
    torch.save(cache, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    report(args.out)


if __name__ == "__main__":
    main()
