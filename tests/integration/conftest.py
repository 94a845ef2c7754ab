"""Real-ComfyUI fixtures. Enabled by ``COMFYUI_PATH`` (a ComfyUI checkout); its requirements and the pack's must
be installed in the interpreter running pytest, or in ``COMFYUI_PYTHON`` for the server.

    COMFYUI_PATH=/work/comfyui /work/comfy-venv/bin/python -m pytest tests/integration
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMFYUI = os.environ.get("COMFYUI_PATH")
HOW = "set COMFYUI_PATH to a ComfyUI checkout (and run pytest with its requirements installed) to run the real-ComfyUI tests"


def pytest_collection_modifyitems(config, items):
    if COMFYUI:
        return
    skip = pytest.mark.skip(reason=HOW)
    for item in items:
        if "integration" in item.nodeid:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy_inprocess():
    """ComfyUI's modules importable in this process, plus the pack imported as a package named ``fair_pack``."""
    sys.path.insert(0, COMFYUI)
    import torch

    import comfy.cli_args  # parses no argv when imported as a library

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # like `main.py --cpu` on a machine without a GPU
    import comfy.model_management  # noqa: F401

    spec = importlib.util.spec_from_file_location("fair_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["fair_pack"] = pack
    spec.loader.exec_module(pack)
    from fair_pack.nodes import _comfy

    _comfy.register_model_folder()
    return pack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A headless ComfyUI on a free port, with the pack linked into a fresh base directory's custom_nodes."""
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-fair-sampling").symlink_to(REPO, target_is_directory=True)
    port = free_port()
    log = open(base / "server.log", "w")
    import torch

    device = [] if torch.cuda.is_available() else ["--cpu"]
    proc = subprocess.Popen([os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", *device, "--listen", "127.0.0.1",
                             "--port", str(port), "--base-directory", str(base), "--disable-auto-launch"],
                            cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/system_stats", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"ComfyUI did not start; see {base / 'server.log'}:\n{(base / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield {"address": address, "base": base, "log": base / "server.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
