"""Parsers of what the remote scripts print, and the scripts' quoting."""
import subprocess

from deploytools.hoststate import HostState, fleet_rollback_target, parse_inspect
from deploytools.releases import release_name
from deploytools.script import facts, write_file
from deploytools.supervisor import parse_status


def test_release_name_sorts_by_time_and_names_the_commit():
    from datetime import datetime, timezone
    a = release_name("abcdef1234", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    b = release_name("0123456789", datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc))
    assert a == "20260102T030405Z-abcdef1" and a < b


def test_parse_inspect():
    out = "\n".join([
        "@@current 20260102T000002Z-bbbbbbb",
        "@@release 20260102T000002Z-bbbbbbb",
        "@@release 20260102T000001Z-aaaaaaa",
        "@@rejected 20260102T000003Z-ccccccc",
        '@@manifest {"commit": "bbbbbbbxx", "release": "20260102T000002Z-bbbbbbb"}',
        "@@status airship                          RUNNING   pid 1234, uptime 0:01:02",
        "noise",
    ])
    st = parse_inspect(out, "airship")
    assert st.current == "20260102T000002Z-bbbbbbb"
    assert st.releases == ["20260102T000001Z-aaaaaaa", "20260102T000002Z-bbbbbbb"]
    assert st.rejected == ["20260102T000003Z-ccccccc"]
    assert st.manifest["commit"] == "bbbbbbbxx"
    assert (st.process.state, st.process.pid, st.process.uptime) == ("RUNNING", 1234, "0:01:02")


def test_previous_release_skips_rejected_and_same_commit():
    st = HostState(current="r4-ddddddd",
                   releases=["r1-aaaaaaa", "r2-bbbbbbb", "r3-ddddddd", "r4-ddddddd", "r5-eeeeeee"],
                   rejected=["r2-bbbbbbb"])
    assert fleet_rollback_target({"h": st}).release == "r1-aaaaaaa"
    assert fleet_rollback_target({"h": HostState(current=None)}).release is None
    assert fleet_rollback_target({"h": HostState(current="r1-a", releases=["r1-a"])}
                                 ).release is None


def test_parse_status_states():
    assert parse_status("airship   FATAL     Exited too quickly", "airship").state == "FATAL"
    assert parse_status("unix:///x/supervisor.sock no such file", "airship").state == "UNKNOWN"
    s = parse_status("airship  RUNNING   pid 7, uptime 2 days, 3:04:05", "airship")
    assert s.uptime == "2 days, 3:04:05"


def test_facts_last_wins():
    assert facts("@@venv built abc\nx\n@@mode reload\n@@mode restart\n") == {
        "venv": "built abc", "mode": "restart"}


def test_write_file_survives_hostile_content(tmp_path):
    path = tmp_path / "it's a $(file)"
    content = "line 1\n'quotes' \"double\" $(rm -rf /) `x` \\ end\n"
    subprocess.run(["bash", "-c", write_file(str(path), content, 0o600)], check=True)
    assert path.read_text() == content
    assert oct(path.stat().st_mode & 0o777) == "0o600"
