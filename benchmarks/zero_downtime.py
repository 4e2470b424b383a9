"""Does an activation lose requests? Every kind of activation under constant load.

    sudo .venv/bin/python benchmarks/zero_downtime.py [--hosts 4] [--rate 200] [--min-requests 2000]

Starts its own fleet (127.0.0.150.., or --first-octet) and a real HAProxy
(the Debian package) on the address after it, builds the skiff (Flask)
sample and deploys v1 of four services, then measures each activation mode
under constant load (tests/loadgen.py: GETs to `/` of every host, or of the
HAProxy frontend, at a fixed rate; each measurement runs until the command
is done and at least --min-requests were sent):

    reload            a code-only release: graceful HUP
    new requirement   a new virtualenv: the program restarts
    env change        a changed `env`: the program restarts
    hard restart      `restart:svc,hard=true`
    rollback          back across virtualenvs: the program restarts
    kind command      a release of a `command` service: it always restarts

for `socket: inherit` (the default for the WSGI kinds: supervisord holds the
socket, two slots restart one at a time) and `socket: bind` (the program binds
its own port: the design before issue 10), directly and through HAProxy with
`lb:` set (hosts drained before a restart). Prints a table of requests and
failures per mode; exits 1 if an `inherit` row, or any row through HAProxy,
lost a request. Needs the wheelhouse that scripts/test builds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

import build_repos  # noqa: E402
import fleet as fleet_mod  # noqa: E402
import yaml  # noqa: E402
from haproxy_fixture import HAProxy  # noqa: E402
from loadgen import LoadGen  # noqa: E402

GATE = {"warmup": 0, "bake": 1, "on_inconclusive": "proceed", "probe_interval": 0.2}
FCGI = ".deploy/venv/bin/gunicorn --bind fd://0 -w 2 --graceful-timeout 5 skiff.app:app"
BOUND = ".deploy/venv/bin/gunicorn --bind \"$HOST:$PORT\" -w 2 --graceful-timeout 5 skiff.app:app"
# name: (port, HAProxy frontend port, settings)
SERVICES = {
    "zdfd": (8250, 8260, {"kind": "flask", "app": "skiff.app:app", "workers": 2,
                          "socket": "inherit"}),
    "zdbind": (8251, 8261, {"kind": "flask", "app": "skiff.app:app", "workers": 2,
                            "socket": "bind"}),
    "zdcmdfd": (8252, 8262, {"kind": "command", "command": FCGI, "socket": "inherit"}),
    "zdcmd": (8253, 8263, {"kind": "command", "command": BOUND, "socket": "bind"}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s over all hosts")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--min-requests", type=int, default=2000)
    ap.add_argument("--first-octet", type=int, default=150)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    wheels = fleet_mod.build_wheelhouse(fleet_mod.default_wheelhouse(), fleet_mod.TEST_REQUIREMENTS)
    rows: list[dict] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp, \
            fleet_mod.Fleet(Path(tmp), n=args.hosts, prefix="zd",
                            first_octet=args.first_octet) as fl:
        tmp = Path(tmp)
        repo = build_repos.build(tmp / "samples", ["skiff"])["skiff"]
        names = [h.name for h in fl.hosts]
        lb_address = f"127.0.0.{args.first_octet + args.hosts + 4}"
        backends = {svc: (lb_port, {h.name: f"{h.address}:{port}" for h in fl.hosts})
                    for svc, (port, lb_port, _) in SERVICES.items()}
        haproxy = HAProxy(tmp / "haproxy", lb_address, backends)
        stack.enter_context(haproxy)  # stopped (by its pid) whatever happens
        data = {
            "ssh": fl.ssh_config_yaml(), "hosts": fl.hosts_yaml(), "roles": {"web": names},
            "defaults": {"pip_args": f"--no-index --find-links {wheels}",
                         "health": {"timeout": 30, "interval": 0.2}, "gate": GATE,
                         "keep_releases": 10,
                         "rollout": [1, "100%"]},
            "services": {svc: dict(settings, repo=str(repo.origin), role="web", port=port,
                                   graceful_timeout=5, env={"ZD_COLOUR": "blue"})
                         for svc, (port, _, settings) in SERVICES.items()}}
        config = tmp / "services.yaml"

        def write(lb: bool) -> None:
            for svc in SERVICES:
                if lb:
                    data["services"][svc]["lb"] = {"host": names[0], "socket": haproxy.socket,
                                                   "backend": svc, "drain_timeout": 10}
                else:
                    data["services"][svc].pop("lb", None)
            config.write_text(yaml.safe_dump(data, sort_keys=False))

        def fab(*a: str) -> tuple[float, str]:
            env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(config),
                       DEPLOYTOOLS_CACHE=str(tmp / "cache"), DEPLOYTOOLS_USER="bench")
            env.pop("DEPLOYTOOLS_JSON", None)
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "deploytools", *a], cwd=ROOT, env=env,
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"fab {' '.join(a)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
            return time.monotonic() - t0, p.stdout

        def measure(svc: str, mode: str, lb: bool, *command: str) -> None:
            port, _, settings = SERVICES[svc]
            urls = ([haproxy.url(svc)] if lb else
                    [f"http://{h.address}:{port}/" for h in fl.hosts])
            before = haproxy.stats()
            with LoadGen(urls, threads=args.threads, duration=900, rate=args.rate) as gen:
                time.sleep(1)  # the load is flowing before anything moves
                secs, _ = fab(*command)
                while gen.stats.requests < args.min_requests:
                    time.sleep(0.2)
            s = gen.stats.summary()
            after = haproxy.stats()
            errs = {c: int(after[(svc, "BACKEND")][c]) - int(before[(svc, "BACKEND")][c])
                    for c in ("hrsp_5xx", "econ", "eresp")} if lb else None
            row = {"service": svc, "kind": settings["kind"], "socket": settings["socket"],
                   "mode": mode, "via": "HAProxy" if lb else "direct",
                   "requests": s["requests"], "failures": s["failures"],
                   "connection_errors": s["connection_errors"], "p99_ms": s["p99_ms"],
                   "max_ms": s["max_ms"], "seconds": round(secs, 1), "haproxy_errors": errs}
            rows.append(row)
            print(f"{row['kind']:<8} {row['socket']:<8} {mode:<16} {row['via']:<8} "
                  f"{row['requests']:>8} {row['failures']:>8} {row['p99_ms'] or 0:>8.1f} "
                  f"{row['max_ms'] or 0:>8.1f} {secs:>6.1f}"
                  + (f"  haproxy 5xx/econ/eresp {errs['hrsp_5xx']}/{errs['econ']}/{errs['eresp']}"
                     if errs else ""), flush=True)

        write(lb=False)
        for svc in SERVICES:
            fab(f"setup:{svc}")
            fab(f"deploy:{svc},ref=v1")
        haproxy.wait_up()
        print(f"{args.hosts} hosts, {args.rate:g} requests/s to / over {args.threads} threads, "
              f"at least {args.min_requests} requests per row\n")
        print(f"{'kind':<8} {'socket':<8} {'mode':<16} {'via':<8} {'requests':>8} "
              f"{'failures':>8} {'p99 ms':>8} {'max ms':>8} {'secs':>6}")
        for lb in (False, True):
            write(lb)
            for svc in ("zdfd", "zdbind"):
                base = repo.commit(f"bench: code-only change ({svc}, lb={lb})",
                                   {"NOTES.md": f"{svc} {lb}\n"}, branch=f"bench-{svc}-{lb}",
                                   base="v2")
                measure(svc, "reload", lb, f"deploy:{svc},ref={base},force=true")
                measure(svc, "new requirement", lb, f"deploy:{svc},ref=v3,force=true")
                data["services"][svc]["env"]["ZD_COLOUR"] = f"green-{lb}"
                write(lb)
                measure(svc, "env change", lb, f"deploy:{svc},ref=v3,force=true")
                measure(svc, "hard restart", lb, f"restart:{svc},hard=true")
                measure(svc, "rollback", lb, f"rollback:{svc}")
            for svc in ("zdcmdfd", "zdcmd"):
                measure(svc, "kind command", lb, f"deploy:{svc},ref={'v2' if not lb else 'v3'},force=true")
    bad = [r for r in rows if r["failures"] and (r["socket"] == "inherit" or r["via"] == "HAProxy")]
    print(f"\nrows that lost requests where none may be lost: {len(bad)}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
