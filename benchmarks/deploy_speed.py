"""How long a deploy takes, phase by phase, on a real 4-host SSH fleet.

    sudo .venv/bin/python benchmarks/deploy_speed.py [--hosts 4] [--rounds 2]

Starts its own fleet (127.0.0.61..), builds the sample repos, and times:
setup, a first deploy (virtualenv built), code-only deploys (venv reused,
graceful reload), a smart deploy, and a rollback. Prints one line per
measurement, and the phase timings of the last code-only deploy from the
--json event stream. Needs the wheelhouse that scripts/test builds.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    wheels = fleet_mod.build_wheelhouse(fleet_mod.default_wheelhouse(), fleet_mod.TEST_REQUIREMENTS)
    with tempfile.TemporaryDirectory() as tmp, \
            fleet_mod.Fleet(Path(tmp), n=args.hosts, prefix="bench", first_octet=61) as fl:
        tmp = Path(tmp)
        samples = build_repos.build(tmp / "samples", ["skiff"])
        config = tmp / "services.yaml"
        config.write_text(yaml.safe_dump({
            "ssh": fl.ssh_config_yaml(), "hosts": fl.hosts_yaml(),
            "roles": {"web": [h.name for h in fl.hosts]},
            "defaults": {"pip_args": f"--no-index --find-links {wheels}",
                         "gate": {"warmup": 0, "bake": 1, "on_inconclusive": "proceed"}},
            "services": {"skiff": {"kind": "flask", "repo": str(samples["skiff"].origin),
                                   "role": "web", "app": "skiff.app:app", "port": 8001,
                                   "graceful_timeout": 5}}}))
        env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(config), DEPLOYTOOLS_CACHE=str(tmp / "cache"))

        def fab(*a):
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "deploytools", *a], cwd=ROOT, env=env,
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"fab {' '.join(a)} failed:\n{p.stderr}")
            return time.monotonic() - t0, p.stdout

        print(f"hosts: {args.hosts}")
        print(f"setup:                      {fab('setup:skiff')[0]:6.2f} s")
        print(f"first deploy (venv built):  {fab('deploy:skiff,ref=v1')[0]:6.2f} s")
        repo = samples["skiff"]
        for i in range(args.rounds):
            sha = repo.commit(f"code-only change {i}", {"NOTES.md": f"round {i}\n"})
            secs, out = fab(f"deploy:skiff,ref={sha}", "--json")
            print(f"code-only deploy #{i + 1}:        {secs:6.2f} s")
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        marks = {}
        for e in events:
            marks.setdefault(e["event"], e["t"])
        print("phases of the last deploy (seconds since start):",
              ", ".join(f"{k}={v:.2f}" for k, v in marks.items()))
        print(f"smart deploy (v3, new req): {fab('smart_deploy:skiff,ref=master')[0]:6.2f} s")
        print(f"rollback:                   {fab('rollback:skiff')[0]:6.2f} s")
        print(f"status:                     {fab('status:skiff')[0]:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
