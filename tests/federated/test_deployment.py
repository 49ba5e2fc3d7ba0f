"""A gradwise strategy against real Flower processes: ``flower-superlink`` and two ``flower-supernode``s on
localhost free ports, the app submitted with ``flwr run``; every process is stopped at the end.

Marked slow: each SuperNode starts a fresh ClientApp process (importing torch) per message, so two rounds
take 1 to 2.5 minutes on 2 shared cores. Run it with ``pytest -m slow tests/federated/test_deployment.py``."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


APP = '''
from gradwise.federated import digits_client_app, digits_server_app, fedau_strategy

client = digits_client_app(alpha=0.3, seed=0)
server = digits_server_app(fedau_strategy(fraction_evaluate=0.0, min_available_nodes=2), num_rounds=2,
                           num_clients=2, alpha=0.3, seed=0, report={report!r})
'''

PYPROJECT = '''
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "gradwisefl"
version = "1.0.0"
description = "gradwise FedAU on digits"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "gradwise"

[tool.flwr.app.components]
serverapp = "gradwisefl_app:server"
clientapp = "gradwisefl_app:client"
'''


@pytest.mark.slow
def test_fedau_runs_two_rounds_on_superlink_and_two_supernodes(tmp_path):
    app_dir, home = tmp_path / "app", tmp_path / "flwr_home"
    app_dir.mkdir()
    home.mkdir()
    report = tmp_path / "report.json"
    (app_dir / "gradwisefl_app.py").write_text(APP.format(report=str(report)))
    (app_dir / "pyproject.toml").write_text(PYPROJECT)
    link = _free_port()
    (home / "config.toml").write_text(textwrap.dedent(f'''
        [superlink]
        default = "local-test"

        [superlink.local-test]
        address = "127.0.0.1:{link}"
        insecure = true
        '''))
    env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(SRC), str(app_dir), os.environ.get("PYTHONPATH", "")]))
    logs = []
    procs = []

    def start(*cmd):
        log = open(tmp_path / f"proc{len(procs)}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], env=env, cwd=tmp_path, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    deadline = time.monotonic() + 240
    try:
        superlink = start("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
                          "--disable-runtime-dependency-installation", "--database", str(tmp_path / "state.db"))
        _wait_port(link, superlink, deadline)
        for i in range(2):
            start("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port", str(_free_port()),
                  "--node-config", f"partition-id={i} num-partitions=2")
        out = subprocess.run([str(BIN / "flwr"), "run", str(app_dir), "local-test", "--stream"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=max(deadline - time.monotonic(), 1))
        logs_text = "\n".join((tmp_path / f"proc{i}.log").read_text() for i in range(len(procs)))
        assert report.exists(), f"flwr run: {out.stdout[-3000:]}\n{out.stderr[-2000:]}\nprocesses:\n{logs_text[-4000:]}"
        acc = json.loads(report.read_text())["None"]
        assert len(acc) == 3 and all(0 <= a <= 1 for a in acc)  # before round 1, after rounds 1 and 2
        assert acc[-1] > acc[0]
    finally:
        _stop(procs)
        for log in logs:
            log.close()


def _stop(procs) -> None:
    """Stop the processes this test started and the ones they started (Flower's SuperExec, ServerApp and
    ClientApp processes run in sessions of their own), each by its id."""
    import psutil

    family = []
    for p in procs:
        try:
            family += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in family:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=15)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for p in procs:
        p.wait(timeout=5)
