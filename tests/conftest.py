"""Shared fixtures: the SSH test fleet and the wheel cache (see tests/fleet.py), and a
services.yaml of two local hosts for the unit tests that need real files and bash."""

import pytest

import fleet as fleet_mod  # tests/fleet.py

from deploytools import config  # noqa: E402


@pytest.fixture(autouse=True)
def _secrets_read_by_one_test_stay_in_it():
    """report.hide is process-wide (a deploy reads its secrets once): a value one test
    resolved must not be redacted in the next test's output."""
    from deploytools import report
    before = list(report._hidden)
    yield
    report._hidden[:] = before


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    """Four real sshd hosts, web-0..web-3 on 127.0.0.11-14:2222, each with
    its own /srv and hostname.  Torn down (every process on every host)
    at the end of the session."""
    f = fleet_mod.Fleet(tmp_path_factory.mktemp("fleet"), n=4, prefix="web",
                        first_octet=fleet_mod.first_octet())
    try:
        f.start()
    except fleet_mod.FleetError as exc:
        pytest.fail(f"{exc}\n(The system tests need root and openssh-server: run them "
                    f"through scripts/test, e.g. `sudo scripts/test`.)", pytrace=False)
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="session")
def wheelhouse():
    """A folder of wheels for TEST_REQUIREMENTS, shared by every host: use
    ``pip_args: "--no-index --find-links <wheelhouse>"`` in services.yaml."""
    try:
        return fleet_mod.build_wheelhouse(fleet_mod.default_wheelhouse(),
                                          fleet_mod.TEST_REQUIREMENTS)
    except (fleet_mod.FleetError, OSError) as exc:
        pytest.fail(f"cannot build the wheelhouse: {exc}\n(scripts/test builds it "
                    f"before the tests; set DEPLOYTOOLS_WHEELHOUSE to move it.)",
                    pytrace=False)


# A command service `svc` on two local hosts h0 and h1, each with its own root
# under tmp_path: real files and real bash through the local seam, no SSH.
LOCAL_PAIR_YAML = """
hosts:
  h0: {{local: true, address: 127.0.0.1, root: {root}/h0}}
  h1: {{local: true, address: 127.0.0.2, root: {root}/h1}}
services:
  svc: {{kind: command, command: "sleep 1", repo: /nonexistent.git, hosts: [h0, h1], port: 9000}}
"""


@pytest.fixture
def local_pair(tmp_path):
    """The loaded config of LOCAL_PAIR_YAML, written to tmp_path/services.yaml."""
    path = tmp_path / "services.yaml"
    path.write_text(LOCAL_PAIR_YAML.format(root=tmp_path))
    return config.load(path)
