"""Shared by the golden-data generators: copy files of the authors' repository, at a given commit, into a fresh
temporary folder (``git show``, so no work tree of theirs is needed) to import them from there."""
import os
import subprocess
import sys
import tempfile


def extract(repo: str, commit: str, names: list[str], *, on_path: tuple[str, ...] = ("",)) -> str:
    """Writes ``names`` (paths inside ``repo``) as they are at ``commit`` under a new temporary folder, puts
    each of ``on_path`` (folders relative to it) at the front of ``sys.path`` and returns the folder."""
    tmp = tempfile.mkdtemp()
    for name in names:
        src = subprocess.run(["git", "-C", repo, "show", f"{commit}:{name}"], check=True, capture_output=True,
                             text=True).stdout
        os.makedirs(os.path.join(tmp, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(tmp, name), "w") as f:
            f.write(src)
    for sub in on_path:
        sys.path.insert(0, os.path.join(tmp, sub))
    return tmp


def run_json(python: str, runner: str, source: str, cases, *, env: dict | None = None):
    """Runs the script text ``runner`` under another Python (``python``: one with the authors' dependencies,
    e.g. CPU jax) as ``runner.py SOURCE CASES.json OUT.json`` and returns what it wrote to OUT.json; ``cases``
    is dumped to CASES.json."""
    import json

    tmp = tempfile.mkdtemp()
    paths = [os.path.join(tmp, n) for n in ("runner.py", "cases.json", "out.json")]
    with open(paths[0], "w") as f:
        f.write(runner)
    with open(paths[1], "w") as f:
        json.dump(cases, f)
    subprocess.run([python, paths[0], source, paths[1], paths[2]], check=True, env={**os.environ, **(env or {})})
    with open(paths[2]) as f:
        return json.load(f)
