"""`make lab`: JupyterLab starts offline on chapters/ and its kernel is the .venv's Python.

Skipped when JupyterLab is not installed (it comes with the `lab` extra: `make lab`, or
`make test-lab`, which installs it and runs this file). The kernel spec is the one the
Makefile writes, "python3" in ``<venv>/share/jupyter``, found first through JUPYTER_PATH
exactly as `make lab` sets it.

1. ``jupyter lab --version`` answers;
2. the lab server starts (no browser, a random token), lists the kernel spec, serves
   ``/lab``, and a kernel it starts runs this very interpreter with toylab importable;
3. chapter 0's notebook executes end to end through nbclient with the same kernel spec.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jupyterlab") is None or importlib.util.find_spec("nbclient") is None,
    reason="JupyterLab is not installed: `make lab` (or `make test-lab`) installs the `lab` extra",
)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
NOTEBOOK = CHAPTERS / "ch00_transformer_from_scratch.ipynb"
JUPYTER = Path(sys.executable).parent / "jupyter"
# the flags `make lab` passes: no update check, no news feed (nothing fetched from the web)
# and no PyPI queries from the extension manager
LAB_FLAGS = ["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None",
             "--LabApp.extension_manager=readonly"]
ROOT_FLAGS = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # as `make lab` does


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory):
    """The environment `make lab` runs in, with private runtime/config dirs for the test."""
    tmp = tmp_path_factory.mktemp("lab")
    env = dict(os.environ)
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    env["JUPYTER_CONFIG_DIR"] = str(tmp / "config")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _spec_argv0(env) -> str:
    code = ("from jupyter_client.kernelspec import KernelSpecManager; "
            "print(KernelSpecManager().get_kernel_spec('python3').argv[0])")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_jupyter_lab_version():
    out = subprocess.run([str(JUPYTER), "lab", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(".")[0] == "4", f"expected JupyterLab 4.x, got {out.stdout!r}"


def test_python3_kernel_spec_is_this_venv(lab_env):
    argv0 = _spec_argv0(lab_env)
    assert os.path.samefile(argv0, sys.executable), (
        f"the lab's python3 kernel runs {argv0}, not this environment's {sys.executable}: "
        "run `make lab` (it writes the kernel spec into the venv)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, token: str, path: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: never via a proxy
    with opener.open(req, timeout=30) as r:
        raw = r.read()
        ctype = r.headers.get("Content-Type", "")
    return json.loads(raw) if "json" in ctype else raw.decode(errors="replace")


def test_lab_server_starts_and_its_kernel_is_this_venv(lab_env, tmp_path):
    from jupyter_client import BlockingKernelClient

    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--notebook-dir={CHAPTERS}",
         f"--IdentityProvider.token={token}", *LAB_FLAGS, *ROOT_FLAGS],
        env=lab_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status = _api(port, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the lab server did not answer within 90 s"
                time.sleep(0.5)
        assert "started" in status
        specs = _api(port, token, "/api/kernelspecs")
        assert "python3" in specs["kernelspecs"]
        assert os.path.samefile(specs["kernelspecs"]["python3"]["spec"]["argv"][0], sys.executable)
        assert "JupyterLab" in _api(port, token, "/lab")
        assert NOTEBOOK.name in {c["name"] for c in _api(port, token, "/api/contents")["content"]}

        kernel = _api(port, token, "/api/kernels", method="POST", body={"name": "python3"})
        conn = Path(lab_env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel['id']}.json"
        for _ in range(100):
            if conn.is_file():
                break
            time.sleep(0.1)
        client = BlockingKernelClient(connection_file=str(conn))
        client.load_connection_file()
        client.start_channels()
        try:
            for attempt in range(3):
                try:
                    client.wait_for_ready(timeout=60)
                    break
                except RuntimeError:
                    # A client that connects while the kernel is still starting takes a heartbeat not yet
                    # seen for a dead kernel ("Kernel died before replying to kernel_info") when the first
                    # reply needs more than a second, as on a loaded machine: retry while the server still
                    # lists the kernel as alive.
                    assert attempt < 2 and _api(port, token, f"/api/kernels/{kernel['id']}")[
                        "execution_state"] != "dead", (tmp_path / "lab.log").read_text()[-2000:]
                    time.sleep(1)
            outputs = []
            reply = client.execute_interactive(
                "import sys, toylab; from toylab.circuits.viewer import attention_viewer; print(sys.executable)",
                timeout=60, output_hook=lambda msg: outputs.append(msg["content"].get("text", "")))
            assert reply["content"]["status"] == "ok", reply["content"]
            assert os.path.samefile("".join(outputs).strip(), sys.executable)
        finally:
            client.stop_channels()
            _api(port, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_chapter_0_executes_with_the_lab_kernel(lab_env, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for key in ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, lab_env[key])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "python3", "the chapters name the python3 kernel the lab registers"
    client = NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(CHAPTERS)}})
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first failure
    ran_in = nb.cells[-1].outputs[0]["text"].strip()
    assert os.path.samefile(ran_in, sys.executable), f"the notebook ran in {ran_in}, not in {sys.executable}"
    nb.cells.pop()
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    n_out = sum(bool(c.get("outputs")) for c in nb.cells if c.cell_type == "code")
    assert n_code > 0 and n_out > 0
