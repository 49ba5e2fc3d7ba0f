"""The ``gradwise`` command line: ``methods``, ``arena``, ``bench`` and ``schedules``.

    gradwise methods [TEXT] [--kind KIND] [--family FAMILY]
                                            the registry, searched (name, title, arXiv id, code URL, ...)
    gradwise arena [STUDY] [options]        run an arena study (default: optimizers)
    gradwise bench [args...]                speed benchmark (benchmarks/optim_step.py of a source checkout)
    gradwise schedules fit LOSSES.csv       fit a loss-curve law (annealing, multi-power) to runs, predict them
    gradwise schedules predict PARAMS.json  predict the loss curve of a schedule with a fitted law
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence

from gradwise import __version__
from gradwise.arena import DEFAULT_STUDY, UsageError, load_study, studies
from gradwise.registry import FAMILIES

__all__ = ["main", "build_parser", "rst_to_text", "escape_percent", "print_methods"]

_BENCH_MISSING = ("gradwise bench compares against pytorch_optimizer, which is not installed; "
                  "install it with: pip install 'gradwise[bench]'")


# --------------------------------------------------------------------------- help text
# Study modules write their docstrings and help in reST (for the API docs); argparse shows them
# verbatim and %-formats every help string. These helpers turn both into plain terminal text here,
# so no study module has to care.

_ROLE = re.compile(r":[A-Za-z][\w.+-]*(?::[A-Za-z][\w.+-]*)?:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_STRONG = re.compile(r"(?<![\w*])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w*])", re.S)
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", re.S)
_INTERPRETED = re.compile(r"(?<![\w`])`([^`\n]+)`(?![\w`])")
# a valid %-format in help text (%(default)s, %%) is kept; any other % is escaped
_PERCENT = re.compile(r"%(?:\([^)]*\)[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]|%)|%")


def _role_text(m: re.Match) -> str:
    """``:class:`~a.b.C``` -> ``C``, ``:func:`a.b``` -> ``a.b``, ``:ref:`title <target>``` -> ``title``."""
    tilde, content = m.group(1), m.group(2)
    if "<" in content and content.rstrip().endswith(">"):
        return content.split("<", 1)[0].strip()
    return content.rsplit(".", 1)[-1] if tilde else content


def rst_to_text(text: str) -> str:
    """reST inline markup as plain text: roles (``:class:`~x.Y``` -> ``Y``), ````literals````,
    ``**strong**``, ``*emphasis*`` and ```interpreted``` lose their markup; a paragraph-ending
    ``::`` becomes ``:`` and directive lines (``.. math::``) are dropped, their body kept."""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    lines = []
    for line in text.splitlines():
        if re.match(r"\s*\.\. [\w-]+::", line):
            continue
        if line.strip() == "::":
            continue
        lines.append(re.sub(r"(\S)::$", r"\1:", line))
    return "\n".join(lines)


def escape_percent(text: str) -> str:
    """Escape every ``%`` argparse would misread (``40%`` -> ``40%%``), keeping ``%(default)s`` and ``%%``."""
    return _PERCENT.sub(lambda m: m.group(0) if len(m.group(0)) > 1 else "%%", text)


_ITEM = re.compile(r"(\s*)([*+-]|\d+[.)]) +")


class _DocFormatter(argparse.HelpFormatter):
    """Wraps a description paragraph by paragraph, keeping list items and indented blocks on their own lines
    (the default formatter runs a whole docstring together into one paragraph)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for para in re.split(r"\n\s*\n", textwrap.dedent(text).strip("\n")):
            lines = para.splitlines()
            if lines and lines[0].startswith((" ", "\t")) and not _ITEM.match(lines[0]):
                out.append("\n".join(indent + ln for ln in lines))  # literal block: as written
                continue
            items: list[list[str]] = []
            for ln in lines:
                if _ITEM.match(ln) or not items:
                    items.append([ln.strip()])
                else:
                    items[-1].append(ln.strip())
            block = []
            for item in items:
                body = " ".join(item)
                m = _ITEM.match(body)
                hang = " " * (len(m.group(0)) - len(m.group(1))) if m else ""
                block.append(textwrap.fill(body, width, initial_indent=indent, subsequent_indent=indent + hang,
                                           break_long_words=False, break_on_hyphens=False))
            out.append("\n".join(block))
        return "\n\n".join(out)


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Every option's help of ``parser`` as plain text, safe for argparse's %-formatting."""
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = escape_percent(" ".join(rst_to_text(action.help).split()))


# --------------------------------------------------------------------------- option values
# A user mistake is one line (`prog: error: argument --x: ...`) and exit status 2, never a traceback or a
# usage block. A study's options are generated from its config (gradwise.arena.options), whose types
# refuse a bad value while parsing, with a message naming what is accepted.

class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a usage error printed as one line and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (the ``bench`` arguments are passed through unparsed)."""
    parser = _Parser(
        prog="gradwise", description="Faithful, fast PyTorch training methods, and an arena that compares them.")
    parser.add_argument("--version", action="version", version=f"gradwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("methods", help="list the registered methods (name, family, kind, paper, summary)",
                       description="List registry records, filtered by TEXT, KIND and FAMILY. A method gradwise does "
                                   "not have is looked up in the seed papers (docs/coverage.md). Exits 1 when no "
                                   "record matches, as grep does.")
    p.add_argument("text", nargs="?", metavar="TEXT",
                   help="case-insensitive text in the name, kind, paper title, arXiv id, authors' code URL or "
                        "summary")
    p.add_argument("--kind", choices=_RegisteredKinds(), metavar="KIND",
                   help="only records of this kind, one of the kinds that have methods: %(choices)s")
    p.add_argument("--family", choices=FAMILIES, metavar="FAMILY",
                   help="only records of this family (the package gradwise.FAMILY they are imported from): "
                        "%(choices)s")

    p = sub.add_parser("arena", help=f"run an arena study (default: {DEFAULT_STUDY})",
                       description=f"Run an arena study. STUDY defaults to {DEFAULT_STUDY!r}; "
                                   "`gradwise arena STUDY --help` shows its options.")
    study_parsers = p.add_subparsers(dest="study", metavar="STUDY")
    for name, study in studies().items():  # the registered studies
        description = rst_to_text((study.description or "").strip())
        if "%(prog)" in description:  # argparse %-formats a description only when it names %(prog)
            description = escape_percent(description)
        sp = study_parsers.add_parser(name, help=escape_percent(rst_to_text(study.help)), description=description,
                                      formatter_class=_DocFormatter)
        study.add_arguments(sp)
        _plain_help(sp)

    sub.add_parser("bench", help="speed benchmark of the optimizers (arguments go to benchmarks/optim_step.py)",
                   add_help=False)
    _add_schedules(sub)
    return parser


_LOSSES_CSV_HELP = ("LOSSES.csv: header run,step,lr,loss; one row per step of each run (steps 1..T, every step, "
                    "any order) with the learning rate used at that step; loss may be empty where it was not "
                    "measured. Example rows: cosine,1,0.0003,  and  cosine,100,0.00029,3.41")


def _add_schedules(sub) -> None:
    """``gradwise schedules fit|predict`` (gradwise.schedules._cli does the work, imported when run)."""
    laws, kinds = ("annealing", "multi-power"), ("constant", "cosine", "wsd", "step")
    p = sub.add_parser("schedules", help="fit loss-curve laws to LR-schedule runs and predict other schedules",
                       description="Loss-curve laws of the LR schedule: the annealing law (Tissue et al. 2024) and "
                                   "the multi-power law (Luo et al. 2025). See docs/schedules.md.")
    ss = p.add_subparsers(dest="schedules_command", metavar="SUBCOMMAND", required=True)
    f = ss.add_parser("fit", help="fit a law on some runs of a losses CSV, predict every run",
                      description="Fit a law on the runs named by --fit-on (default: all) and predict every run. "
                                  "Writes DIR/params.json, DIR/predictions.csv (run,step,lr,loss,predicted) and "
                                  "DIR/fit.png, and prints per run: fitted or held out, the mean absolute "
                                  "percentage error, the largest absolute error and the error at the last "
                                  "measured step. " + _LOSSES_CSV_HELP)
    f.add_argument("losses", metavar="LOSSES.csv", help="the runs (header run,step,lr,loss)")
    f.add_argument("--law", choices=laws, default="annealing", help="which law (default: %(default)s)")
    f.add_argument("--fit-on", metavar="RUN[,RUN...]", help="comma-separated run names to fit on (default: all)")
    f.add_argument("--decay", type=float, default=None, metavar="LAMBDA",
                   help="the annealing law's momentum decay factor, 0 <= LAMBDA < 1 (default: 0.999)")
    f.add_argument("--out", metavar="DIR", help="output folder (default: runs/schedules-<time>)")
    q = ss.add_parser("predict", help="predict the loss curve of a schedule with a fitted law",
                      description="Predict the loss after every step of one schedule with the law of PARAMS.json "
                                  "(written by gradwise schedules fit). The schedule is a CSV (header step,lr; "
                                  "steps 1..T) or a named shape. Writes DIR/predicted.csv (step,lr,predicted) and "
                                  "DIR/predicted.png.")
    q.add_argument("params", metavar="PARAMS.json", help="params.json of gradwise schedules fit")
    q.add_argument("--law", choices=laws, help="fail unless PARAMS.json holds this law")
    q.add_argument("--schedule-csv", metavar="S.csv", help="the schedule: header step,lr, one row per step 1..T")
    q.add_argument("--schedule", choices=kinds, help="a named schedule: %(choices)s")
    q.add_argument("--steps", type=int, metavar="N", help="steps of the named schedule")
    q.add_argument("--peak-lr", type=float, metavar="X", help="its peak (and constant) learning rate")
    q.add_argument("--final-lr", type=float, metavar="Y", help="its final learning rate (default: X / 10)")
    q.add_argument("--decay-fraction", type=float, default=0.2, metavar="F",
                   help="wsd and step: the fraction of steps after the decay starts (default: %(default)s)")
    q.add_argument("--out", metavar="DIR", help="output folder (default: runs/schedules-<time>)")


def _schedules(args) -> int:
    from gradwise.schedules._cli import CurveInputError, fit_command, predict_command

    prog = f"gradwise schedules {args.schedules_command}"
    try:
        if args.schedules_command == "fit":
            fit_command(args.losses, args.law, args.fit_on, args.decay, args.out)
        else:
            predict_command(args.params, law=args.law, schedule_csv=args.schedule_csv, schedule=args.schedule,
                            steps=args.steps, peak_lr=args.peak_lr, final_lr=args.final_lr,
                            decay_fraction=args.decay_fraction, out=args.out)
    except CurveInputError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


class _RegisteredKinds(Sequence):
    """``--kind`` choices: the kinds that have registered methods, in the registry's KINDS order.

    Resolved on first use (``gradwise methods --kind ...`` or its ``--help``), because listing the
    records imports torch and every method package: ``gradwise --help`` and ``gradwise arena`` must not
    pay for that. KINDS itself keeps kinds planned for future families, which are not offered here.
    """

    def __init__(self) -> None:
        self._kinds: tuple[str, ...] | None = None

    def _resolve(self) -> tuple[str, ...]:
        if self._kinds is None:
            from gradwise.registry import registered_kinds

            self._kinds = registered_kinds()
        return self._kinds

    def __getitem__(self, i):
        return self._resolve()[i]

    def __len__(self) -> int:
        return len(self._resolve())

    def __contains__(self, kind: object) -> bool:
        return kind in self._resolve()


# Where the seed-paper statuses are documented (docs/coverage.md), also for installs without the repo.
_COVERAGE = "docs/coverage.md"


def _methods_table(records, width: int):
    """The widest layout whose every column fits its longest word at ``width`` columns, or None.

    Rich wraps cells at spaces but folds a word longer than its column mid-word, so a layout is used
    only when its minimum width (each column as wide as its longest word) fits the console.
    """
    from rich.table import Table
    from rich.text import Text

    title = f"gradwise methods ({len(records)})"
    wide = Table(title=title)
    for col in ("name", "family", "kind", "year"):
        wide.add_column(col, no_wrap=True)
    wide.add_column("paper", ratio=3)
    wide.add_column("arXiv", no_wrap=True)
    wide.add_column("summary", ratio=4)
    for m in records:
        wide.add_row(*(Text(c) for c in (m.name, m.family, m.kind, str(m.year), m.paper, m.arxiv or "—", m.summary)))

    # narrow: one column naming the method, one with its paper and (dimmed) summary
    narrow = Table(title=title, show_lines=True)
    narrow.add_column("method", no_wrap=True)
    narrow.add_column("paper / summary")
    for m in records:
        narrow.add_row(f"[bold]{_escape(m.name)}[/]\n{m.family}\n{m.kind}\n{m.year}"
                       + (f"\narXiv {m.arxiv}" if m.arxiv else ""),
                       f"{_escape(m.paper)}\n[dim]{_escape(m.summary)}[/]")
    for table in (wide, narrow):
        if _min_width(table) <= width:
            return table
    return None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _min_width(table) -> int:
    """The table's minimum width: each column as wide as its longest word (no_wrap cells: their text)."""
    import io

    from rich.console import Console

    probe = Console(width=10_000, file=io.StringIO())
    return table.__rich_measure__(probe, probe.options).minimum


def print_methods(console, records) -> None:
    """Print registry ``records`` on ``console``: a table in the widest layout that fits the console
    without splitting a word, else one block of wrapped lines per record."""
    table = _methods_table(records, console.width)
    if table is not None:
        console.print(table)
        return
    from rich.text import Text

    console.print(f"gradwise methods ({len(records)})")
    for m in records:  # very narrow terminals: plain wrapped text, broken at spaces
        head = Text(m.name, style="bold")
        head.append(f"  {m.family}  {m.kind}  {m.year}" + (f"  arXiv {m.arxiv}" if m.arxiv else ""))
        console.print(head)
        console.print(Text(m.paper))
        console.print(Text(m.summary, style="dim"))
        console.print()


def _not_implemented(console, text: str) -> None:
    """Say that gradwise has no method matching ``text``, and what the seed-paper list says about it."""
    from rich.markup import escape
    from rich.table import Table

    from gradwise.docs import seed_papers
    from gradwise.registry import methods, normalize_text

    console.print(f"No gradwise method matches {escape(repr(text))}: gradwise does not implement it. "
                  f"{_COVERAGE} lists the seed papers and what gradwise does with each (implemented, planned "
                  "or out of scope).", highlight=False)
    key = normalize_text(text)
    hits = [p for p in seed_papers() if key and any(key in normalize_text(f) for f in (p.title, p.arxiv, p.component))]
    if not hits:
        return
    implemented = {normalize_text(m.paper) for m in methods() if m.seed}
    table = Table(title=f"seed papers mentioning {escape(repr(text))} ({_COVERAGE})")
    table.add_column("#", no_wrap=True)
    table.add_column("paper")
    table.add_column("status", no_wrap=True)
    table.add_column("detail")
    for p in hits[:10]:
        status = ("implemented" if normalize_text(p.title) in implemented
                  else p.status + (f" (issue {p.issue})" if p.issue else ""))
        table.add_row(str(p.idx), escape(p.title) + (f" (arXiv {p.arxiv})" if p.arxiv else ""), status,
                      escape(p.reason))
    console.print(table)
    if len(hits) > 10:
        console.print(f"... and {len(hits) - 10} more in {_COVERAGE}")


def _methods(text: str | None, kind: str | None, family: str | None = None, console=None) -> int:
    from rich.console import Console

    from gradwise.registry import methods

    console = console or Console()
    records = methods(text, kind, family)
    if records:
        print_methods(console, records)
        return 0
    # nothing matched: say why, and exit 1 as grep does, so a script can tell
    if text and (kind or family) and methods(text):
        others = methods(text)
        where = " and ".join(f"{what} {value!r}" for what, value in (("kind", kind), ("family", family)) if value)
        console.print(f"No method of {where} matches {text!r}; elsewhere: "
                      + ", ".join(f"{m.name} ({m.family}, {m.kind})" for m in others), highlight=False, markup=False)
    elif text:
        _not_implemented(console, text)
    elif kind and family:  # each alone has methods; together they may have none
        console.print(f"No method of kind {kind!r} in family {family!r}; that family's kinds: "
                      + ", ".join(sorted({m.kind for m in methods(family=family)})), highlight=False, markup=False)
    else:  # a kind is only offered when it has methods, so this is an empty registry
        console.print("no methods registered yet")
    return 1


def _bench(argv: list[str]) -> int:
    """Run ``benchmarks/optim_step.py``'s ``main(argv)`` (a source checkout's); one line and exit 2 without it."""
    from gradwise._benchmarks import BenchmarksNotFound, load

    def missing_peer(err: ModuleNotFoundError) -> bool:
        return (err.name or "").split(".")[0] == "pytorch_optimizer"

    try:
        rc = load("optim_step").main(argv)
    except BenchmarksNotFound as err:
        print(f"gradwise bench: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if missing_peer(err):
            print(f"gradwise bench: error: {_BENCH_MISSING}", file=sys.stderr)
            return 2
        raise
    return rc if isinstance(rc, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradwise`` command; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["bench"]:
        return _bench(args_in[1:])
    if args_in[:1] == ["arena"] and (len(args_in) == 1 or (args_in[1].startswith("-")
                                                           and args_in[1] not in ("-h", "--help"))):
        args_in.insert(1, DEFAULT_STUDY)
    args = build_parser().parse_args(args_in)

    if args.command == "methods":
        return _methods(args.text, args.kind, args.family)
    if args.command == "schedules":
        return _schedules(args)
    if args.command == "arena":
        from rich.console import Console

        try:
            load_study(args.study).run(args, Console())
        except UsageError as err:
            print(f"gradwise arena {args.study}: error: {err}", file=sys.stderr)
            return 2
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
