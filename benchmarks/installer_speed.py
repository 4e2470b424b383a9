"""uv against pip: cold, code-only and new-requirement deploys, under the same load.

    sudo .venv/bin/python benchmarks/installer_speed.py [--rounds 3] [--octet 61]

Starts its own 2-host fleet (127.0.0.<octet>..), builds the ketch sample (Flask app
factory, dependencies in pyproject.toml) and, each round, deploys two new services of it
side by side in time, one with `installer: pip` on web-0 and one with `installer: uv` on
web-1: v1 (cold: the service's tools/ and its first virtualenv), v2 (code only: the venv
is reused) and v3 (a new requirement, `six`: a new venv). The two run one after the
other, step by step, and which goes first alternates each round, so both see the same
load. Wheels come from the test wheelhouse (no network); the per-user pip and uv caches
of the host are left as they are (warm after the first round, as on a real host that
already runs a service). Prints each deploy's wall time and staging time, then the
median of each and the uv/pip ratio. Needs the wheelhouse that scripts/test builds.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
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

STEPS = (("cold", "v1"), ("code only", "v2"), ("new requirement", "v3"))
STAGED = re.compile(r": staged \(.*; ([0-9.]+)s\)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--octet", type=int, default=61, help="first loopback octet of the fleet")
    args = ap.parse_args()
    wheels = fleet_mod.build_wheelhouse(fleet_mod.default_wheelhouse(), fleet_mod.TEST_REQUIREMENTS)
    with tempfile.TemporaryDirectory() as tmp, \
            fleet_mod.Fleet(Path(tmp), n=2, prefix="instb", first_octet=args.octet) as fl:
        tmp = Path(tmp)
        ketch = build_repos.build(tmp / "samples", ["ketch"])["ketch"]
        config = tmp / "services.yaml"
        services = {}
        for n in range(args.rounds):
            for i, installer in enumerate(("pip", "uv")):
                services[f"k{n}-{installer}"] = {
                    "kind": "flask", "repo": str(ketch.origin), "hosts": [fl.hosts[i].name],
                    "app": "ketch:create_app()", "port": 8100 + 10 * n + i,
                    "graceful_timeout": 5, "health": {"path": "/hello"},
                    "installer": installer, "production_branch": f"production-{n}-{installer}",
                    "tag_prefix": f"production-{n}-{installer}-"}
        config.write_text(yaml.safe_dump({
            "ssh": fl.ssh_config_yaml(), "hosts": fl.hosts_yaml(),
            "defaults": {"pip_args": f"--no-index --find-links {wheels}",
                         "gate": {"warmup": 0, "bake": 1, "on_inconclusive": "proceed"}},
            "services": services}))
        env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(config), DEPLOYTOOLS_CACHE=str(tmp / "cache"))

        def deploy(svc: str, ref: str) -> tuple[float, float]:
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "deploytools", f"deploy:{svc},ref={ref}"],
                               cwd=ROOT, env=env, capture_output=True, text=True)
            took = time.monotonic() - t0
            if p.returncode:
                raise SystemExit(f"deploy {svc} {ref} failed:\n{p.stdout}\n{p.stderr}")
            staged = [float(x) for x in STAGED.findall(p.stdout)]
            return took, max(staged)

        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for n in range(args.rounds):
            order = ("pip", "uv") if n % 2 == 0 else ("uv", "pip")
            for step, ref in STEPS:
                for installer in order:
                    took, staged = deploy(f"k{n}-{installer}", ref)
                    results.setdefault((step, installer), []).append((took, staged))
                    print(f"round {n + 1} {step:<16} {installer:<3}: deploy {took:6.1f} s, "
                          f"staging {staged:5.1f} s", flush=True)
        print("\nmedians over", args.rounds, "rounds (deploy / staging, seconds):")
        for step, _ in STEPS:
            med = {i: (statistics.median(t for t, _ in results[(step, i)]),
                       statistics.median(s for _, s in results[(step, i)])) for i in ("pip", "uv")}
            print(f"  {step:<16} pip {med['pip'][0]:5.1f} / {med['pip'][1]:5.1f}   "
                  f"uv {med['uv'][0]:5.1f} / {med['uv'][1]:5.1f}   "
                  f"uv/pip staging {med['uv'][1] / med['pip'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
