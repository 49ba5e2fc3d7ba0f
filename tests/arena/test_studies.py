"""Every registered study, run through the CLI in its smallest form (``Study.smoke``): a new study is
covered by registering it."""
from __future__ import annotations

import json

import pytest

from gradwise.arena import STUDIES, load_study
from gradwise.arena.options import methods_from_args
from gradwise.cli import build_parser, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# studies whose smallest run still takes a minute (federated: Flower starts Ray), run with -m slow; their own
# tests cover them with stand-ins by default
SLOW_SMOKE = {"federated"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMOKE else n for n in STUDIES])
def test_study_runs_in_its_smallest_form(name, tmp_path, capsys):
    study = load_study(name)
    assert study.smoke, f"{name}: give the study its smallest command line (Study.smoke)"
    out = tmp_path / "run"
    assert main(["arena", name, *study.smoke, "--out", str(out)]) == 0
    for f in ("results.csv", "results.json", *study.outputs):
        assert (out / f).stat().st_size > 0, f
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == PNG_MAGIC, f
    doc = json.loads((out / "results.json").read_text())
    args = build_parser().parse_args(["arena", name, *study.smoke])
    methods = methods_from_args(study, args)
    assert doc["study"] == name and doc["config"]["seeds"] == args.seeds
    ranked = [s for s in doc["summary"] if s["rank"] is not None]
    assert sorted(s[study.name_key] for s in ranked) == sorted(methods)
    assert min(s["rank"] for s in ranked) == 1
    assert len([r for r in doc["runs"] if r.get(study.key) in methods]) == len(methods) * args.seeds
    printed = capsys.readouterr().out
    assert "machine:" in printed and f"results: {out}/" in printed
