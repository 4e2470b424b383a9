"""Fixtures of the system tests: PostgreSQL, the sample repos, the shared deploy environment."""
from __future__ import annotations

import subprocess

import pytest
import yaml

import build_repos
from sysenv import Env, Postgres, services_yaml


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """Debian's PostgreSQL on loopback, shared by every host (as in production).
    Started here if it is not running (scripts/test and .ci/run install it)."""
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True)
    if listing.returncode != 0 or not listing.stdout.strip():
        pytest.fail("PostgreSQL is not installed: run the tests through scripts/test "
                    "(.ci/run installs it)", pytrace=False)
    version, cluster, _port, status = listing.stdout.split()[:4]
    if status != "online":
        subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True)
    return Postgres()


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    return build_repos.build(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def deployenv(fleet, samples, wheelhouse, postgres, tmp_path_factory) -> Env:
    tmp = tmp_path_factory.mktemp("deploy")
    config = tmp / "services.yaml"
    data = services_yaml(fleet, samples, wheelhouse, tmp)
    data["services"]["airship"]["env"]["DATABASE_URL"] = postgres.database("airship")
    data["services"]["smart"]["env"]["DATABASE_URL"] = postgres.database("smart")
    # smart has its own copy of the repo: its tests watch `production` and the tags.
    smart_samples = build_repos.build(tmp / "smart-samples", ["airship"])
    data["services"]["smart"]["repo"] = str(smart_samples["airship"].origin)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return Env(dir=tmp, config=config, samples=samples, fleet=fleet,
               smart_repo=smart_samples["airship"])
