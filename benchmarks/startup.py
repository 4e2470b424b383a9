"""How long `deploytools` takes to start: `--list` and a parse error, run N times
(hyperfine-like: min / median / max wall time), and which heavy modules they load.

    .venv/bin/python benchmarks/startup.py            # 20 runs each
    .venv/bin/python benchmarks/startup.py --runs 50

Listing the tasks or rejecting a bad command line must not import the SSH stack
(paramiko/cryptography through fabric's connection), git, requests or Jinja2; the
report says which of them each command loaded (from `python -X importtime`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("paramiko", "cryptography", "fabric.connection", "git", "requests", "jinja2",
         "deploytools.operations", "deploytools.rollout", "deploytools.inventory")

COMMANDS = {
    "--list": ["--list"],
    "--help deploy": ["--help", "deploy"],
    "parse error": ["deploy:airship,colour=red"],
}


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - t0)
    return out


def loaded(argv: list[str]) -> list[str]:
    """The HEAVY modules a command imports (`-X importtime` lines)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-m", "deploytools"] + argv[1:],
                         capture_output=True, text=True, check=False).stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines()
             if line.startswith("import time:")}
    return [h for h in HEAVY if h in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "deploytools")
    base = timed([sys.executable, "-c", "pass"], args.runs)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"(1/5/15 min), {args.runs} runs each")
    print(f"{'command':<28} {'min':>7} {'median':>7} {'max':>7}  heavy modules loaded")
    print(f"{'python -c pass':<28} {min(base):7.3f} {statistics.median(base):7.3f} "
          f"{max(base):7.3f}")
    for label, rest in COMMANDS.items():
        argv = [exe] + rest
        t = timed(argv, args.runs)
        heavy = loaded(argv) or ["none"]
        print(f"{'deploytools ' + label:<28} {min(t):7.3f} {statistics.median(t):7.3f} "
              f"{max(t):7.3f}  {', '.join(heavy)}")


if __name__ == "__main__":
    main()
