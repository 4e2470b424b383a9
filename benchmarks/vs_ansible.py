"""deploytools against the usual Ansible playbook, on fresh N-host fleets.

    sudo .venv/bin/python benchmarks/vs_ansible.py --hosts 4 16 32 [--ansible-up-to 16]

For each N it starts a fresh fleet of N real sshd hosts (tests/fleet.py, from
127.0.0.100 or --first-octet), builds the skiff (Flask) sample, and runs the same
four steps with both tools, one after the other so that both see the same load:

    cold              nothing on the hosts: deploytools `setup` + `deploy v1`;
                      the playbook's first run (supervisor venv, checkout, venv, start)
    code-only         v2: a code change (venv reused, graceful HUP)
    new requirement   v3: a new requirement (`six`): a new virtualenv, a restart
    rollback          back to v2 across virtualenvs: `deploytools rollback`; the
                      playbook run again with v2 (how its users roll back)

The playbook (benchmarks/ansible/deploy.yml) does the same canary -> 50% -> rest
rollout the Ansible way: `serial: [1, "50%", "100%"]`, the git, pip, file,
template and uri modules, pipelining and ControlPersist (ansible.cfg). ansible-core
comes from PyPI into its own virtualenv (--ansible-venv). Both tools install from the
same local wheelhouse (the one scripts/test builds), and deploytools' gate is as small
as services.yaml allows (warmup 0, bake 0.1 s), as in issue 13.

It prints a table with the ratio of the two tools from the same run, the 16- and
32-host times as a multiple of the 4-host time, the phases of deploytools'
code-only deploy (from its --json events), and the SSH round trips per host of that
deploy (an instrumented run: benchmarks/roundtrips.py). Next to each time: how many
of the machine's cores the step kept busy (/proc/stat), and the CPU time of the
controller itself (deploytools and its children). When the first is near the core
count, the step waited on the machine (every test host's processes share its cores),
not on the tool. Read the ratios, and the load printed next to them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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

HERE = Path(__file__).resolve().parent
STEPS = ("cold", "code-only", "new requirement", "rollback")


def cpu_busy() -> float:
    """Seconds of CPU time the whole machine has spent busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def ensure_ansible(venv: Path) -> Path:
    """ansible-playbook from ansible-core, installed from PyPI into its own virtualenv."""
    exe = venv / "bin" / "ansible-playbook"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ansible-core"], check=True)
    return exe


class DeployTools:
    def __init__(self, fl, tmp: Path, origin: Path, wheels: Path):
        self.tmp = tmp
        config = tmp / "services.yaml"
        config.write_text(yaml.safe_dump({
            "ssh": fl.ssh_config_yaml(), "hosts": fl.hosts_yaml(),
            "roles": {"web": [h.name for h in fl.hosts]},
            "defaults": {"pip_args": f"--no-index --find-links {wheels}",
                         "gate": {"warmup": 0, "bake": 0.1, "max_extensions": 0,
                                  "on_inconclusive": "proceed"}},
            "services": {"skiff": {"kind": "flask", "repo": str(origin), "role": "web",
                                   "app": "skiff.app:app", "port": 8001,
                                   "graceful_timeout": 5}}}))
        self.env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(config),
                        DEPLOYTOOLS_CACHE=str(tmp / "cache"), DEPLOYTOOLS_JSON="1")
        self.runs = 0

    def __call__(self, *args: str) -> tuple[float, list[dict], dict]:
        """Run deploytools (instrumented); (seconds, its JSON events, round trips)."""
        self.runs += 1
        counts = self.tmp / f"roundtrips-{self.runs}.json"
        t0 = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([sys.executable, str(HERE / "roundtrips.py"), str(counts), *args],
                           cwd=self.tmp, env=self.env, capture_output=True, text=True)
        secs = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The controller's own CPU time (deploytools, its ssh and git children).
        self.cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if p.returncode:
            raise SystemExit(f"deploytools {' '.join(args)} failed:\n{p.stderr}")
        events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
        return secs, events, json.loads(counts.read_text())


class Ansible:
    def __init__(self, exe: Path, fl, tmp: Path, origin: Path, wheels: Path):
        self.exe, self.origin, self.wheels = exe, origin, wheels
        self.inventory = tmp / "inventory.ini"
        key, known = fl.identity_file, fl.known_hosts
        lines = ["[web]"] + [f"{h.name} ansible_host={h.address} ansible_port={h.ssh_port} "
                             "ansible_user=root" for h in fl.hosts]
        lines += ["[web:vars]", f"ansible_ssh_private_key_file={key}",
                  f"ansible_ssh_common_args='-o UserKnownHostsFile={known} "
                  "-o StrictHostKeyChecking=yes'"]
        self.inventory.write_text("\n".join(lines) + "\n")
        self.env = dict(os.environ, ANSIBLE_CONFIG=str(HERE / "ansible" / "ansible.cfg"),
                        ANSIBLE_HOME=str(tmp / "ansible-home"),
                        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"))

    def __call__(self, commit: str) -> float:
        t0 = time.monotonic()
        p = subprocess.run([str(self.exe), "-i", str(self.inventory),
                            str(HERE / "ansible" / "deploy.yml"), "-e", json.dumps({
                                "commit": commit, "repo": str(self.origin),
                                "pip_args": f"--no-index --find-links {self.wheels}"})],
                           cwd=HERE / "ansible", env=self.env, capture_output=True, text=True)
        secs = time.monotonic() - t0
        if p.returncode:
            raise SystemExit(f"ansible-playbook ({commit[:7]}) failed:\n{p.stdout[-3000:]}"
                             f"\n{p.stderr[-2000:]}")
        return secs


def phases(events: list[dict], wall: float) -> list[tuple[str, float]]:
    """Where a deploy's time went, from its --json events (t: seconds since start).
    Each phase ends at an event: the last `staged` or `activated` of a step, a gate's
    verdict; warnings and the like end none."""
    out: list[tuple[str, float]] = []
    last = 0.0
    label_of = {"plan": "controller git fetch, resolve",
                "stage": "connect, lock + inspect (+ staging, in the same round trip)",
                "tag": "publish (production branch, tag)"}
    wave = 0
    pending = None
    for e in events:
        kind, t = e["event"], float(e.get("t", 0.0))
        if kind == "staged":
            pending = ("staging left (hosts not staged with the lock)", t)
            continue
        if kind == "activated":
            pending = (f"wave {wave}: note + activate + ready", t)
            continue
        if kind not in label_of and kind not in ("wave", "gate"):
            continue  # warnings, gate_warning, wave_done...: inside the phase around them
        if pending:
            out.append((pending[0], pending[1] - last))
            last = pending[1]
            pending = None
        if kind == "wave":
            wave = e.get("wave", wave + 1)
            label = (f"wave {wave}: before_wave hooks" if wave > 1
                     else "after staging: migrations, after_stage hooks")
        elif kind == "gate":
            label = f"wave {wave}: gate (bake)"
        else:
            label = label_of[kind]
        out.append((label, t - last))
        last = t
    out.append(("history + prune + unlock, exit", wall - last))
    return out


def per_host(rt: dict) -> dict[str, dict[str, int]]:
    return {h: dict(c) for h, c in rt["counts"].items()}


def bench(n: int, args, wheels: Path, ansible_exe: Path | None) -> dict:
    out: dict = {"hosts": n, "deploytools": {}, "ansible": {}, "load": []}
    with tempfile.TemporaryDirectory() as tmp, \
            fleet_mod.Fleet(Path(tmp), n=n, prefix="bench", first_octet=args.first_octet) as fl:
        tmp = Path(tmp)
        repo = build_repos.build(tmp / "samples", ["skiff"])["skiff"]
        dt = DeployTools(fl, tmp, repo.origin, wheels)
        an = Ansible(ansible_exe, fl, tmp, repo.origin, wheels) if ansible_exe else None
        sha = {v: repo.resolve(v) for v in ("v1", "v2", "v3")}
        plan = {"cold": [("setup:skiff",), ("deploy:skiff,ref=v1",)],
                "code-only": [("deploy:skiff,ref=v2",)],
                "new requirement": [("deploy:skiff,ref=v3",)],
                "rollback": [("rollback:skiff",)]}
        ans_ref = {"cold": "v1", "code-only": "v2", "new requirement": "v3", "rollback": "v2"}
        for step in STEPS:
            out["load"].append(load())
            total = ctl_cpu = 0.0
            busy0 = cpu_busy()
            for argv in plan[step]:
                secs, events, rt = dt(*argv)
                total += secs
                ctl_cpu += dt.cpu
            out["deploytools"][step] = total
            out.setdefault("controller_cpu", {})[step] = ctl_cpu
            # How much of the machine the step kept busy: near the core count, the time
            # is the machine's CPU (every host's processes), not waiting on the tool.
            out.setdefault("cores_busy", {})[step] = (cpu_busy() - busy0) / total
            out.setdefault("events", {})[step] = (events, secs)
            out.setdefault("roundtrips", {})[step] = per_host(rt)
            if an:
                out["ansible"][step] = an(sha[ans_ref[step]])
            print(f"  {n} hosts, {step}: deploytools {total:.1f} s "
                  f"({out['cores_busy'][step]:.1f} of {os.cpu_count()} cores busy, "
                  f"controller CPU {ctl_cpu:.1f} s)"
                  + (f", ansible {out['ansible'][step]:.1f} s" if an else "")
                  + f"  ({out['load'][-1]})", flush=True)
    return out


def report(results: list[dict]) -> None:
    base = {r["hosts"]: r for r in results}
    first = results[0]["hosts"]
    print()
    # The machine's CPU floor: the step's whole CPU time (the hosts' processes and the
    # controller) spread over every core. A step near its floor is bound by this
    # machine, where N hosts share its cores, not by the tool.
    print("| Work | Ansible | deploytools | ratio | vs " f"{first} hosts | cores busy | "
          "hosts' CPU per host | CPU floor |")
    print("|---|---|---|---|---|---|---|---|")
    cores = os.cpu_count() or 1
    for r in results:
        n = r["hosts"]
        for step in STEPS:
            d = r["deploytools"][step]
            a = r["ansible"].get(step)
            ratio = f"{d / a:.2f}" if a else ""
            scale = (f"{d / base[first]['deploytools'][step]:.1f}x" if n != first else "")
            busy = r.get("cores_busy", {}).get(step, 0)
            hosts_cpu = busy * d - r.get("controller_cpu", {}).get(step, 0)
            print(f"| {step} ({n} hosts) | {f'{a:.1f} s' if a else '—'} | {d:.1f} s | "
                  f"{ratio} | {scale} | {busy:.1f} | {hosts_cpu / n:.2f} s | "
                  f"{busy * d / cores:.1f} s |")
    print()
    for r in results:
        print(f"{r['hosts']} hosts, load before each step: {'; '.join(r['load'])}")
    for r in results:
        events, wall = r["events"]["code-only"]
        print(f"\nPhases of the code-only deploy on {r['hosts']} hosts ({wall:.2f} s):")
        for label, secs in phases(events, wall):
            print(f"  {label:<44} {secs:6.2f} s")
        rt = r["roundtrips"]["code-only"]
        release = [c.get("release", 0) for c in rt.values()]
        bake = [c.get("bake", 0) for c in rt.values()]
        beat = [c.get("heartbeat", 0) for c in rt.values()]
        print(f"  SSH round trips per host: {min(release)}..{max(release)} outside the bake, "
              f"{min(bake)}..{max(bake)} in the bakes, {max(beat)} lock heartbeats")
        rb = r["roundtrips"]["rollback"]
        print(f"  rollback: {max(c.get('release', 0) for c in rb.values())} round trips per host")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--ansible-up-to", type=int, default=16,
                    help="run the playbook only on fleets of at most this many hosts")
    ap.add_argument("--no-ansible", action="store_true")
    ap.add_argument("--first-octet", type=int, default=100)
    ap.add_argument("--ansible-venv", type=Path,
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "deploytools-bench" / "ansible")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    wheels = fleet_mod.build_wheelhouse(fleet_mod.default_wheelhouse(), fleet_mod.TEST_REQUIREMENTS)
    exe = None if args.no_ansible else ensure_ansible(args.ansible_venv)
    print(f"{load()}; {os.cpu_count()} CPUs")
    results = [bench(n, args, wheels, exe if n <= args.ansible_up_to else None)
               for n in args.hosts]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
