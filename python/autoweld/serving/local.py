"""A Triton Inference Server on this machine, from the ``nvidia-pytriton`` wheel (tests, bench).

``nvidia-pytriton`` ships a runnable ``tritonserver`` (2.51) with the Python backend only. It is
not installed as a package (it pins ``numpy<2`` and would change the station's environment):
:func:`prepare_server` unpacks the wheel under a directory of its own and builds beside it the
environment the Python backend runs the models in:

- ``ROOT/pytriton``: the wheel, ``pip install --no-deps --target``;
- ``ROOT/tritonserver``: its server with the backend stub of this interpreter's Python version;
- ``ROOT/venv``: a virtual environment with ``numpy<2`` (the 2.51 stub hands back empty tensors
  from numpy 2 arrays), this machine's ONNX Runtime version, OpenCV and tqdm, and the running
  ``autoweld`` package (a copy, with its compiled core) on its path.

Each step is done once and kept (a marker file says it finished), so later calls are quick.
:class:`LocalTritonServer` starts that server on 127.0.0.1 on free ports with the caveats the
stub needs: the interpreter's ``libpython`` directory on ``LD_LIBRARY_PATH`` and the
environment's ``bin`` first on ``PATH``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["PYTRITON_REQUIREMENT", "LocalTritonServer", "ServerDist", "free_port", "prepare_server"]

log = logging.getLogger(__name__)

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
#: what the backend's environment gets besides autoweld (numpy<2: see the module docstring)
SERVER_REQUIREMENTS = ("numpy>=1.24,<2", "opencv-python-headless>=4.8", "tqdm>=4.60")


@dataclass(frozen=True)
class ServerDist:
    """A prepared server: its binary, backends directory, libraries and the backend's Python."""

    tritonserver: Path
    backends: Path
    libraries: Path
    venv: Path

    def environment(self) -> dict[str, str]:
        """The environment the server (and the backend stub it starts) needs."""
        env = dict(os.environ)
        libpython = sysconfig.get_config_var("LIBDIR") or ""
        paths = [libpython, str(self.libraries), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        env["PYTHONNOUSERSITE"] = "1"
        return env


def _run(command: list[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def _once(marker: Path, step) -> None:
    if not marker.exists():
        step()
        marker.write_text("done\n")


def prepare_server(root: str | Path) -> ServerDist:
    """Unpack ``nvidia-pytriton`` and build the backend's environment under ``root`` (once),
    and copy the running autoweld into it (every call: the server runs this very code)."""
    import onnxruntime

    import autoweld

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    wheel = root / "pytriton"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _once(
        root / ".pytriton.done",
        lambda: _run(
            [*pip, "install", "--no-deps", "--target", str(wheel), PYTRITON_REQUIREMENT],
            "unpacking nvidia-pytriton",
        ),
    )
    server = root / "tritonserver"

    def lay_out_server() -> None:
        shutil.rmtree(server, ignore_errors=True)
        shutil.copytree(
            wheel / "pytriton" / "tritonserver",
            server,
            ignore=shutil.ignore_patterns("python_backend_stubs"),
        )
        stub = wheel / "pytriton/tritonserver/python_backend_stubs" / version
        if not (stub / "triton_python_backend_stub").exists():
            raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
        shutil.copy2(stub / "triton_python_backend_stub", server / "backends/python/")

    _once(root / ".tritonserver.done", lay_out_server)
    venv = root / "venv"
    requirements = [*SERVER_REQUIREMENTS, f"onnxruntime=={onnxruntime.__version__}"]

    def make_venv() -> None:
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "making the backend's venv")
        _run([str(venv / "bin/python"), *pip[1:], "install", *requirements], "pip install")

    _once(root / f".venv-{onnxruntime.__version__}.done", make_venv)
    _copy_autoweld(Path(autoweld.__file__).parent, root / "site", venv)
    return ServerDist(
        tritonserver=server / "bin/tritonserver",
        backends=server / "backends",
        libraries=wheel / "nvidia_pytriton.libs",
        venv=venv,
    )


def _copy_autoweld(package: Path, site: Path, venv: Path) -> None:
    """The running autoweld (sources and compiled core) into ``site``, on the venv's path."""
    import autoweld._native as compiled

    target = site / "autoweld"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(compiled.__file__, target / Path(compiled.__file__).name)
    done = subprocess.run(
        [str(venv / "bin/python"), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    Path(done.stdout.strip(), "autoweld-serving.pth").write_text(f"{site}\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalTritonServer:
    """``tritonserver`` serving ``repository`` on 127.0.0.1 (gRPC, HTTP and metrics on free
    ports); a context manager that waits until every model is ready and stops the server on
    exit. ``log_path`` receives the server's output."""

    def __init__(
        self,
        dist: ServerDist,
        repository: str | Path,
        log_path: str | Path,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        """``ports``: gRPC, HTTP and metrics ports (default: three free ones)."""
        self.dist = dist
        self.repository = Path(repository)
        self.log_path = Path(log_path)
        self.grpc_port, self.http_port, self.metrics_port = ports or (
            free_port(),
            free_port(),
            free_port(),
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What ``--server`` takes."""
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 120.0) -> LocalTritonServer:
        command = [
            str(self.dist.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.dist.backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=5",
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=self.dist.environment()
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"tritonserver not ready within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> LocalTritonServer:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
