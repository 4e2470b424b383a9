"""Shared fixtures: the SSH test fleet and the wheel cache (see tests/fleet.py)."""

import pytest

import fleet as fleet_mod  # tests/fleet.py


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
