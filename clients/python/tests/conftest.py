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


class Gantry:
    """A gantry process the test can SIGKILL and start again on the same
    address and data directory."""

    def __init__(self, data_dir: pathlib.Path, listen: str = "127.0.0.1:0"):
        self.data_dir, self.listen = data_dir, listen
        self.proc = None
        self.addr = ""
        self.start()

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [gantry_bin(), "serve", "--config", str(CONFIG), "--listen", self.listen,
             "--metrics-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0", "--data-dir", str(self.data_dir)],
            stderr=subprocess.PIPE, text=True,
        )
        found, ready = {}, threading.Event()

        def read(stream):
            for line in stream:
                match = re.search(r"gantry listening grpc=(\S+)", line)
                if match:
                    found["addr"] = match.group(1)
                    ready.set()

        threading.Thread(target=read, args=(self.proc.stderr,), daemon=True).start()
        if not ready.wait(20):
            self.proc.kill()
            raise RuntimeError("gantry did not start")
        self.addr = self.listen = found["addr"]
        return self.addr

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


@pytest.fixture
def gantry_factory(tmp_path):
    """Starts killable gantries; stops whatever is left at the end."""
    made = []

    def make(name: str = "data") -> Gantry:
        g = Gantry(tmp_path / name)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


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
