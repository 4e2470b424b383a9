"""Issue 10, pure parts: HAProxy's answers, the commands sent to it, the socket modes,
the status of a service that runs two slots, and the `lb:` / `socket` settings."""
from __future__ import annotations

import shlex
import subprocess

import pytest

from deploytools import handoff, lb, render
from deploytools.config import Lb, parse
from deploytools.errors import ConfigError
from deploytools.supervisor import parse_status

STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,
fe_zd,FRONTEND,,,1,3,2000,2510,1,2,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,52,,,,0,2509,0,1,0,0,
zd,web-0,0,0,0,2,,630,1,2,,0,,0,0,0,0,UP,1,1,0,0,0,61,0,,1,3,1,,630,,2,0,,12,L7OK,200,1,0,630,0,0,0,0,
zd,web-1,0,0,2,2,,620,1,2,,0,,1,0,0,0,DRAIN,1,1,0,0,0,61,0,,1,3,2,,620,,2,0,,12,L7OK,200,1,0,618,0,0,2,0,
zd,BACKEND,0,0,2,3,200,1250,1,2,0,0,,1,0,0,0,UP,2,2,0,,0,61,0,,1,3,0,,1250,,1,0,,52,,,,0,1248,0,0,2,0,
"""


def test_parse_stat_rows_by_proxy_and_server():
    rows = lb.parse_stat(STAT)
    assert rows[("zd", "web-1")]["status"] == "DRAIN"
    assert rows[("zd", "web-1")]["scur"] == "2"
    assert lb.errors_of(rows[("zd", "web-1")]) == {"hrsp_5xx": 2, "econ": 1, "eresp": 0,
                                                    "requests": 620}
    assert lb.errors_of(rows[("zd", "web-0")])["hrsp_5xx"] == 0
    assert ("fe_zd", "FRONTEND") in rows
    assert lb.parse_stat("") == {}


def test_split_answers_one_per_command():
    assert lb.split_answers("\n@@end\n# pxname,svname\nzd,web-0\n@@end\n") == [
        "", "# pxname,svname\nzd,web-0"]


def test_command_script_quotes_every_value_and_runs(tmp_path):
    script = lb.command_script("/run/ha proxy/admin.sock", ["set server zd/web-0 state drain"])
    assert "'/run/ha proxy/admin.sock'" in script
    with pytest.raises(lb.LBError):
        lb.command_script("/s", ["show stat\nshutdown frontend fe"])
    # Against a fake admin socket: the client sends each line on its own connection.
    import socket
    import threading
    path = str(tmp_path / "admin.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    seen = []

    def serve():
        for _ in range(2):
            c, _ = srv.accept()
            line = c.recv(1024).decode()
            seen.append(line)
            c.sendall(b"" if line.startswith("set") else b"# pxname,svname\nzd,web-0\n")
            c.close()
    th = threading.Thread(target=serve)
    th.start()
    out = subprocess.run(["bash", "-c", lb.command_script(path, ["set server zd/web-0 state drain",
                                                                 "show stat"])],
                         capture_output=True, text=True, timeout=20)
    th.join(5)
    srv.close()
    assert out.returncode == 0, out.stderr
    assert seen == ["set server zd/web-0 state drain\n", "show stat\n"]
    assert lb.split_answers(out.stdout) == ["", "# pxname,svname\nzd,web-0"]


def test_server_names_are_checked():
    settings = Lb(host="lb-0", socket="/s", backend="zd", server="{host}-app")
    assert lb.server_name(settings, "web-0") == "web-0-app"
    with pytest.raises(lb.LBError):
        lb.check_name("zd; shutdown", "backend name")


def test_status_of_two_slots_is_one_status():
    out = ("zd:zd_0                        RUNNING   pid 10820, uptime 0:00:03\n"
           "zd:zd_1                        RUNNING   pid 10849, uptime 0:00:03\n")
    s = parse_status(out, "zd")
    assert (s.state, s.pid) == ("RUNNING", 10820)
    s = parse_status(out.replace("RUNNING   pid 10849, uptime 0:00:03", "STARTING"), "zd")
    assert s.state == "STARTING"
    assert parse_status("zd:zd_0   FATAL     Exited too quickly", "zd").state == "FATAL"
    # another service's slots are not ours
    assert parse_status("zdx:zdx_0  RUNNING   pid 1, uptime 0:00:01", "zd").state == "UNKNOWN"
    assert parse_status("zd:*: ERROR (no such group)", "zd").state == "UNKNOWN"


CONFIG = """\
hosts:
  web-0: {local: true}
  lb-0: {local: true, address: 127.0.0.2}
services:
  skiff:
    kind: flask
    repo: /r.git
    hosts: [web-0]
    app: skiff.app:app
    port: 8001
%s
  tool:
    kind: command
    repo: /r.git
    hosts: [web-0]
    command: ./serve
    port: 8002
%s
"""


def test_socket_mode_by_kind_and_lb_settings():
    cfg = parse(CONFIG % ("    lb: {host: lb-0, socket: /run/haproxy.sock, backend: skiff}", ""))
    skiff, tool = cfg.service("skiff"), cfg.service("tool")
    assert (skiff.socket, tool.socket) == ("inherit", "bind")
    assert handoff.inherits(skiff) and not handoff.inherits(tool)
    assert skiff.lb == Lb("lb-0", "/run/haproxy.sock", "skiff", "{host}", 30.0)
    assert tool.lb is None
    cfg = parse(CONFIG % ("", "    socket: inherit"))
    assert handoff.inherits(cfg.service("tool"))


@pytest.mark.parametrize("lb_yaml, message", [
    ("    lb: {host: lb-9, socket: /s, backend: skiff}", "unknown host 'lb-9'"),
    ("    lb: {host: lb-0, backend: skiff}", "missing required key 'socket'"),
    ("    lb: {host: lb-0, socket: /s, backend: 'a b'}", "not an HAProxy name"),
    ("    lb: {host: lb-0, socket: /s, backend: skiff, drain: 3}", "unknown key 'drain'"),
    ("    socket: fd0", "inherit"),
])
def test_bad_lb_and_socket_settings(lb_yaml, message):
    with pytest.raises(ConfigError) as info:
        parse(CONFIG % (lb_yaml, ""))
    assert message in str(info.value)


def test_rendered_supervisord_and_gunicorn_configs_follow_the_socket_mode():
    cfg = parse(CONFIG % ("", ""))
    host = cfg.hosts["web-0"]
    files = {f.path: f.content for f in render.service_files(cfg.service("skiff"), host, "/srv/skiff")}
    conf = files["etc/supervisord.conf"]
    assert "[fcgi-program:skiff]" in conf and "socket=tcp://127.0.0.1:8001" in conf
    assert "numprocs=2" in conf
    rel = {f.path: f.content for f in render.release_files(cfg.service("skiff"), host, "/srv/skiff",
                                                          "r1", "abc")}
    assert 'bind = "fd://0"' in rel[".deploy/gunicorn.conf.py"]
    assert "workers = 1" in rel[".deploy/gunicorn.conf.py"]  # 2 workers over two slots
    tool = {f.path: f.content for f in render.service_files(cfg.service("tool"), host, "/srv/tool")}
    assert "[program:tool]" in tool["etc/supervisord.conf"]
    assert "fcgi-program" not in tool["etc/supervisord.conf"]


def test_restart_needed_script_quotes_the_release():
    cfg = parse(CONFIG % ("", ""))
    script = handoff.restart_needed_script(cfg.service("skiff"), "/srv/skiff", "r'1")
    assert shlex.quote("r'1") in script
    assert handoff.restart_needed_script(cfg.service("tool"), "/srv/tool", "r1") == \
        "echo '@@restart yes'\n"


def test_gate_source_haproxy_needs_lb():
    with pytest.raises(ConfigError) as info:
        parse(CONFIG % ("    gate: {source: haproxy}", ""))
    assert "haproxy needs an lb: block" in str(info.value)
    cfg = parse(CONFIG % ("    gate: {source: haproxy}\n"
                          "    lb: {host: lb-0, socket: /s, backend: skiff}", ""))
    assert cfg.service("skiff").gate.source == "haproxy"
    assert cfg.service("tool").gate.source == "logs"
