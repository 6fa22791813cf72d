"""A real gantry for every test module: the binary cargo built (GANTRY_BIN)."""

import os
import pathlib
import re
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]

CONFIG = ROOT / "clients" / "testdata" / "gantry.toml"


def gantry_bin() -> str:
    binary = os.environ.get("GANTRY_BIN") or str(ROOT / "target" / "debug" / "gantry")
    if not os.path.exists(binary):
        if os.environ.get("GANTRY_REQUIRE_CLIENT_TESTS"):
            raise RuntimeError(f"no gantry binary at {binary}")
        pytest.skip("no gantry binary: cargo build, or set GANTRY_BIN")
    return binary


@pytest.fixture
def gantry_addr():
    yield from start_gantry({})


def start_gantry(env):
    """A gantry on 127.0.0.1 with extra environment (GANTRY_* keys); yields its address."""
    with tempfile.TemporaryDirectory() as tmp:
        config = CONFIG
        proc = subprocess.Popen(
            [gantry_bin(), "serve", "--config", str(config), "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0", "--data-dir", str(pathlib.Path(tmp) / "data")],
            stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
        )
        found = {}
        ready = threading.Event()

        def read():
            for line in proc.stderr:
                match = re.search(r"gantry listening grpc=(\S+)", line)
                if match:
                    found["addr"] = match.group(1)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20):
            proc.kill()
            raise RuntimeError("gantry did not start")
        try:
            yield found["addr"]
        finally:
            proc.terminate()
            proc.wait(15)
