"""A real HAProxy in front of the test fleet (Debian's `haproxy`; .ci/run installs it).

    with HAProxy(dir, "127.0.0.119", {"zd": (8590, {"web-0": "127.0.0.111:8500", ...})}) as lb:
        lb.url("zd")                # http://127.0.0.119:8590/: the frontend of backend zd
        lb.socket                   # the admin socket (`stats socket ... level admin`)
        lb.stats()[("zd", "web-0")]["hrsp_5xx"]

Runs in the foreground (`-db`) as a child of the tests, on its own loopback
address, with active health checks of `/healthz`; stopped (by its pid) and
its files removed at the end. No retries and no redispatch: a connection a
backend refuses is a client error here, so the counters cannot hide one.
"""
from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    retries 0
    option http-server-close

{proxies}"""

PROXY = """
frontend fe_{backend}
    bind {address}:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


class HAProxyError(RuntimeError):
    pass


class HAProxy:
    def __init__(self, dir: Path, address: str, backends: dict[str, tuple[int, dict[str, str]]]):
        self.dir = Path(dir)
        self.address = address
        self.backends = backends  # name -> (frontend port, {server name: ADDRESS:PORT})
        self.socket = str(self.dir / "admin.sock")
        self.proc: subprocess.Popen | None = None

    def url(self, backend: str) -> str:
        return f"http://{self.address}:{self.backends[backend][0]}/"

    def start(self) -> "HAProxy":
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise HAProxyError("haproxy is not installed (apt-get install haproxy; .ci/run does)")
        self.dir.mkdir(parents=True, exist_ok=True)
        proxies = "".join(PROXY.format(
            backend=name, address=self.address, port=port,
            servers="\n".join(f"    server {s} {addr} check inter 500 fall 2 rise 1"
                              for s, addr in servers.items()))
            for name, (port, servers) in self.backends.items())
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(CONFIG.format(socket=self.socket, proxies=proxies))
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode:
            raise HAProxyError(f"bad haproxy config:\n{check.stdout}{check.stderr}")
        self.log = open(self.dir / "haproxy.log", "w")
        self.proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not Path(self.socket).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise HAProxyError("haproxy did not start: "
                                   + (self.dir / "haproxy.log").read_text()[-2000:])
            time.sleep(0.1)
        return self

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.socket)
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        text = self.command("show stat").lstrip("# ")
        return {(r["pxname"], r["svname"]): r for r in csv.DictReader(io.StringIO(text))
                if r.get("pxname")}

    def wait_up(self, timeout: float = 30) -> None:
        """Until every server of every backend passes its health check."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.stats()
            states = {(b, n): rows.get((b, n), {}).get("status")
                      for b, (_, servers) in self.backends.items() for n in servers}
            if all(s == "UP" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise HAProxyError(f"servers not UP after {timeout}s: {states}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        Path(self.socket).unlink(missing_ok=True)

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
