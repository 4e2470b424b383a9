"""Does a rollout lose requests? Load on every host while code-only releases go out.

    sudo .venv/bin/python benchmarks/zero_downtime.py [--hosts 4] [--rounds 2] [--rate 320]

Starts its own fleet (127.0.0.81..), builds the airship sample, deploys v1,
then measures (tests/loadgen.py, GETs to `/` of every host at a fixed rate):
a steady window with no deploy, for comparison, and each round a code-only
release rolled out canary -> half -> rest with the error-rate gates on.
Prints, per measurement: requests, failures (connection errors, timeouts,
5xx), throughput and latency percentiles, the deploy's duration and each
gate's counts. Exits 1 if any request failed during a rollout. Needs the
wheelhouse that scripts/test builds.
"""
from __future__ import annotations

import argparse
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
from loadgen import LoadGen  # noqa: E402

SVC, PORT = "bench", 8200
# The system test's gate numbers (tests/system/test_canary.py explains them):
# test-sized traffic, verdicts decided by the statistics.
GATE = {"warmup": 1, "bake": 5, "min_diff": 0.02, "min_requests": 150,
        "max_extensions": 1, "on_inconclusive": "rollback"}


def write_config(path: Path, fl, wheels: Path, origin: Path, rollout: list) -> Path:
    path.write_text(yaml.safe_dump({
        "ssh": fl.ssh_config_yaml(), "hosts": fl.hosts_yaml(),
        "roles": {"web": [h.name for h in fl.hosts]},
        "defaults": {"pip_args": f"--no-index --find-links {wheels}",
                     "health": {"timeout": 20, "interval": 0.2}},
        "services": {SVC: {
            "kind": "django", "repo": str(origin), "role": "web",
            "app": "airship.wsgi:application", "port": PORT, "workers": 2,
            "graceful_timeout": 5, "env": {"DJANGO_SETTINGS_MODULE": "airship.settings"},
            "migrate": False, "collectstatic": False, "rollout": rollout, "gate": GATE}}},
        sort_keys=False))
    return path


def row(label: str, stats, extra: str = "") -> str:
    s = stats.summary()
    return (f"{label:<22} {s['requests']:>7} {s['failures']:>8} {s['connection_errors']:>6} "
            f"{s['rps']:>7.1f} {s['p50_ms'] or 0:>7.1f} {s['p95_ms'] or 0:>7.1f} "
            f"{s['p99_ms'] or 0:>7.1f} {s['max_ms'] or 0:>8.1f}  {extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="code-only rollouts to measure")
    ap.add_argument("--rate", type=float, default=320.0, help="requests/s over all hosts")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of load with no deploy")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    wheels = fleet_mod.build_wheelhouse(fleet_mod.default_wheelhouse(), fleet_mod.TEST_REQUIREMENTS)
    results: dict = {"hosts": args.hosts, "rate": args.rate, "rounds": []}
    lost = 0
    with tempfile.TemporaryDirectory() as tmp, \
            fleet_mod.Fleet(Path(tmp), n=args.hosts, prefix="zd", first_octet=81) as fl:
        tmp = Path(tmp)
        repo = build_repos.build(tmp / "samples", ["airship"])["airship"]
        waves = write_config(tmp / "services.yaml", fl, wheels, repo.origin, [1, "50%", "100%"])
        first = write_config(tmp / "first.yaml", fl, wheels, repo.origin, ["100%"])
        urls = [f"http://{h.address}:{PORT}/" for h in fl.hosts]

        def fab(config: Path, *a: str) -> tuple[float, str]:
            env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(config),
                       DEPLOYTOOLS_CACHE=str(tmp / "cache"), DEPLOYTOOLS_USER="bench")
            env.pop("DEPLOYTOOLS_JSON", None)
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "deploytools", *a], cwd=ROOT, env=env,
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"fab {' '.join(a)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
            return time.monotonic() - t0, p.stdout

        def load(duration: float) -> LoadGen:
            return LoadGen(urls, threads=args.threads, duration=duration, rate=args.rate)

        print(f"{args.hosts} hosts, {args.rate:g} requests/s to / over {args.threads} threads")
        fab(waves, f"setup:{SVC}")
        secs, _ = fab(first, f"deploy:{SVC},ref=v1")
        print(f"first deploy of v1 (one wave, venv built): {secs:.1f} s\n")
        print(f"{'':<22} {'requests':>7} {'failures':>8} {'conn':>6} {'req/s':>7} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8}")
        with load(args.steady) as gen:
            gen.wait()
        print(row("steady (no deploy)", gen.stats))
        results["steady"] = gen.stats.summary()

        base = "v2"
        for i in range(args.rounds):
            sha = repo.commit(f"bench: code-only change {i}", {"NOTES.md": f"round {i}\n"},
                              branch="bench", base=base)
            base = sha
            with load(600) as gen:
                time.sleep(1)  # the load is flowing before anything moves
                secs, out = fab(waves, f"deploy:{SVC},ref={sha}")
            stats = gen.stats
            lost += stats.failures
            rec = json.loads((fl.hosts[0].srv / SVC / "history.jsonl").read_text()
                             .splitlines()[-1])
            gates = [f"{g['outcome']} {g['figures']['e_c']}/{g['figures']['n_c']}"
                     + (f" vs {g['figures']['e_b']}/{g['figures']['n_b']}"
                        if g["figures"]["n_b"] is not None else "")
                     for g in rec.get("gates", [])]
            modes = sorted({s for s in rec["steps"] if s.startswith("activate_")})
            print(row(f"rollout #{i + 1} ({secs:.0f} s)", stats,
                      f"{', '.join(modes)}; gates: {'; '.join(gates)}"))
            results["rounds"].append({"deploy_seconds": round(secs, 1), "load": stats.summary(),
                                      "gates": rec.get("gates"), "waves": rec.get("waves")})
    print(f"\nrequests lost during rollouts: {lost}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
