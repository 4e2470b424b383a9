"""A service's own supervisord, asked over its socket: status, and the rolling restart.

    python -I -S - SOCKET status GROUP
        `supervisorctl status GROUP:*`: the same lines and exit status (parsed by
        deploytools.supervisor.parse_status and the remote programs' greps).
    python -I -S - SOCKET signal GROUP SIGNAL
        `supervisorctl signal SIGNAL GROUP:*` (a graceful reload: HUP for gunicorn).
    python -I -S - SOCKET reload GROUP SIGNAL
        `status`, then `signal` only when every process is RUNNING: the activation's
        graceful reload, in one start-up and one look.
    python -I -S - SOCKET restart GROUP WORKERS_DIR|- START_WAIT STOP_WAIT [STARTSECS]
        `bin/ctl restart-program`: restart the processes so they run `current` afresh
        (STARTSECS: the program's `startsecs`, when supervisord calls it RUNNING).
    python -I -S - SOCKET stop GROUP STOP_WAIT
        `supervisorctl stop GROUP:*`, without losing a stop to a process that supervisord
        has forked but not yet exec'd (see Forks).

The restart: two slots sharing supervisord's socket (an fcgi-program) restart one at a
time. A slot is stopped (gracefully) while the other accepts, started again, and
waited for until it serves (gunicorn: a worker of its new master has booted, its
marker in WORKERS_DIR; otherwise: RUNNING) before the next one stops, so no connection
is refused. One process alone is stopped and started, which drops connections until it
listens again (said with `@@drops`). Then every slot is waited for until supervisord
says RUNNING (`startsecs` after its start) with the pid it was started with, so a slot
that dies early fails the restart; `@@slot_pids PID...` names them. Exit 1, with the
reason on stderr, when a slot does not stop, start or serve.

Why one program, standard library only (-I -S), XML-RPC written by hand: it starts in
about 10 ms of CPU, where each supervisorctl run imports supervisor (80 ms); a restart
used to take six of those.
Why a stop is asked without waiting and then polled: with `stopProcess(name, wait=True)`
supervisord spins its event loop until the process has exited (its deferred reply has
no delay), which cost it 0.2 s of CPU per slot.
Why the waits look at /proc first: each call costs supervisord about a millisecond of
CPU, and a restart polled it about 50 times. While the process waited for is up and
nothing can have changed, the kernel is asked (`gone`), and supervisord once the
process has exited, when it should be RUNNING, or every ASK_ALIVE-th look all the
same (a pid reused, /proc hidden): about 16 calls per restart.
"""
import _socket  # not socket: its enum and selectors imports were 6 of a start's 20 ms
import os
import sys
import time
from xml.parsers import expat

POLL = 0.02  # a stop or a boot takes 0.1-0.3 s: looked at this often
ASK_ALIVE = 10  # ...but supervisord, while the process is up, only every 10th look
STOPPED = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")
UP = ("STARTING", "RUNNING", "BACKOFF")
SUCCESS = 80  # supervisor.xmlrpc.Faults.SUCCESS


class Failed(Exception):
    pass


class Fault(Exception):
    """supervisord refused a call (an XML-RPC fault: "BAD_NAME: x", "NOT_RUNNING: x")."""

    def __init__(self, code, string):
        super().__init__(f"{code}: {string}")
        self.faultCode, self.faultString = code, string


class ProtocolError(Exception):
    pass


# XML-RPC by hand, over the UNIX socket: xmlrpc.client imports http.client, email and
# ssl, 20 of the 30 ms this program would take to start. supervisord's calls need
# strings, integers and booleans in, and those plus structs and arrays back.
def _param(v):
    if isinstance(v, bool):
        return f"<value><boolean>{int(v)}</boolean></value>"
    if isinstance(v, int):
        return f"<value><int>{v}</int></value>"
    text = str(v).translate({38: "&#38;", 60: "&#60;", 62: "&#62;"})  # & < >
    return f"<value><string>{text}</string></value>"


def _loads(body):
    """The value of an XML-RPC methodResponse; a fault raises Fault."""
    done, stack, names, typed, text = [], [], [], [], []
    fault = []

    def emit(v):
        if stack and isinstance(stack[-1], dict):
            stack[-1][names.pop()] = v
        elif stack:
            stack[-1].append(v)
        else:
            done.append(v)
        if typed:
            typed[-1] = True

    def start(tag, attrs):
        text.clear()
        if tag == "value":
            typed.append(False)
        elif tag in ("array", "struct"):
            stack.append([] if tag == "array" else {})
        elif tag == "fault":
            fault.append(True)

    def end(tag):
        s = "".join(text)
        text.clear()
        if tag == "value":
            if not typed.pop():
                emit(s)  # a value with no type is a string
        elif tag == "name":
            names.append(s)
        elif tag == "string":
            emit(s)
        elif tag in ("int", "i4", "i8"):
            emit(int(s))
        elif tag == "boolean":
            emit(s.strip() == "1")
        elif tag == "double":
            emit(float(s))
        elif tag in ("array", "struct"):
            emit(stack.pop())

    p = expat.ParserCreate("utf-8")
    p.StartElementHandler, p.EndElementHandler = start, end
    p.CharacterDataHandler = text.append
    p.Parse(body, True)
    if not done:
        raise ProtocolError("an empty XML-RPC answer")
    if fault:
        raise Fault(done[0].get("faultCode"), done[0].get("faultString", ""))
    return done[0]


class RPC:
    """supervisord's `supervisor.*` methods over its UNIX socket: one HTTP/1.0 request
    per call (supervisord closes the connection after the answer)."""

    def __init__(self, path, timeout=30):
        self.path, self.timeout = path, timeout

    def call(self, method, *params):
        body = ("<?xml version='1.0'?><methodCall><methodName>supervisor." + method
                + "</methodName><params>"
                + "".join(f"<param>{_param(v)}</param>" for v in params)
                + "</params></methodCall>").encode()
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            data, length = b"", None
            while True:  # to the end of the body: its Content-Length, else the close
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, answer = data.partition(b"\r\n\r\n")
                if sep and length is None:
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), -1)
                if sep and 0 <= length <= len(answer):
                    break
        finally:
            s.close()
        head, _, answer = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise ProtocolError(f"supervisord answered {head[:80]!r}")
        return _loads(answer)

    def __getattr__(self, method):
        return lambda *params: self.call(method, *params)


def connect(path):
    """supervisord's `supervisor` XML-RPC namespace, over its UNIX socket."""
    return RPC(path)


def namespec(info):
    """How supervisorctl names a process: GROUP:NAME, or NAME alone for a [program:NAME]."""
    return info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}"


def namespec_of(info):
    """GROUP:NAME, as the XML-RPC calls take a process (a [program:NAME] too)."""
    return f"{info['group']}:{info['name']}"


def describe(info):
    """A process for a message: NAME STATE description."""
    return f"{namespec(info)} {info['statename']} {info['description']}".rstrip()


def status_line(info, width=33):
    """One line of `supervisorctl status`, in its template: the name padded to 3 more than
    the longest name (at least 30), the state to 10, then supervisord's description."""
    return f"{namespec(info):<{width}}{info['statename']:<10}{info['description']}"


def status(rpc, group, out=sys.stdout, infos=None):
    """Print `supervisorctl status GROUP:*`; exit as supervisorctl does: 4 (unknown) for
    no such group, 3 when a process is stopped, exited or fatal, else 0."""
    if infos is None:
        infos = [i for i in rpc.getAllProcessInfo() if i["group"] == group]
    if not infos:
        print(f"{group}: ERROR (no such group)", file=out)
        return 4
    width = max([30] + [len(namespec(i)) for i in infos]) + 3
    for info in infos:
        print(status_line(info, width), file=out)
    return 3 if any(i["statename"] in STOPPED for i in infos) else 0


def signal(rpc, group, sig):
    """Send `sig` to every process of `group`; fail naming any that did not take it."""
    try:
        results = rpc.signalProcessGroup(group, sig)
    except Fault as e:
        raise Failed(f"{group}: ERROR ({e.faultString})") from None
    failed = [r for r in results if r["status"] != SUCCESS]
    if failed:
        raise Failed("; ".join(f"{r['group']}:{r['name']}: ERROR ({r['description']})"
                               for r in failed))
    return 0


def reload(rpc, group, sig, out=sys.stdout):
    """Print the status (as `status`); then, only when every process of `group` is
    RUNNING, send them `sig` and return 0. Otherwise return the status's exit (4), or 3:
    nothing was signalled."""
    infos = [i for i in rpc.getAllProcessInfo() if i["group"] == group]
    rc = status(rpc, group, out, infos)
    if not infos or any(i["statename"] != "RUNNING" for i in infos):
        return rc or 3
    return signal(rpc, group, sig)


def proc_stat(pid):
    """The fields of /proc/PID/stat after "pid (comm)": state, ppid, ... (comm may hold
    spaces and parentheses); None once `pid` is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent_of(pid):
    """The parent pid of `pid` (None once it is gone)."""
    try:
        return int(proc_stat(pid)[1])
    except (TypeError, IndexError, ValueError):
        return None


def booted(workers, master):
    """Has a worker of `master` booted (written its marker in the `workers` directory)?"""
    try:
        names = os.listdir(workers)
    except OSError:
        return False
    return any(n.isdigit() and parent_of(n) == master for n in names)


def gone(pid):
    """Has `pid` exited (no such process, or a zombie not yet reaped)?"""
    fields = proc_stat(pid)
    return not fields or fields[0] in ("Z", "X")


def cmdline(pid):
    """The command line of `pid` (bytes), None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


class Forks:
    """Which processes are still supervisord's own fork, not yet the program it execs.

    Until the exec the child runs supervisord's code, whose signal handlers only note a
    signal for a main loop that the child never runs: the TERM of a stop is lost, and
    supervisord waits `stopwaitsecs` (15 s) before its SIGKILL. A program that crashes
    over and over (a broken release, nothing deployed yet) is often just forked when a
    deploy stops it. Such a child still has supervisord's command line."""

    def __init__(self, rpc):
        self.rpc, self._parent = rpc, None

    def forked_only(self, pid):
        if not pid:
            return False
        if self._parent is None:
            self._parent = cmdline(self.rpc.getPID()) or b""
        # (supervisord's own line unreadable, /proc mounted hidepid: nothing to go by)
        return bool(self._parent) and cmdline(pid) == self._parent

    def wait(self, pid, wait=1.0):
        """Until `pid` has exec'd (or is gone), at most `wait` seconds; True if it was
        still a fork when asked."""
        if not self.forked_only(pid):
            return False
        deadline = time.monotonic() + wait
        while self.forked_only(pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        return True


def ask_stop(rpc, info, forks):
    """Ask supervisord to stop one process (without waiting); its stop signal reaches the
    program, not a fork that would lose it. Returns the pid that is stopping, or None
    when there was nothing to stop."""
    if info["statename"] not in UP:
        return None
    name = namespec_of(info)
    if info["statename"] == "STARTING":
        forks.wait(info["pid"])
    try:
        rpc.stopProcess(name, False)
    except Fault as e:
        if "NOT_RUNNING" not in e.faultString:  # it went down meanwhile
            raise Failed(f"{name} did not stop: {e.faultString}") from None
        return None
    after = rpc.getProcessInfo(name)
    if after["statename"] == "STOPPING" and after["pid"] != info["pid"]:
        # Started again between the look and the stop (a retry): our TERM may have
        # reached its fork. Again, once it is the program (TERM is every slot's stop
        # signal, see supervisord.conf.j2; a second one is harmless).
        if forks.wait(after["pid"]):
            try:
                os.kill(after["pid"], 15)
            except OSError:
                pass
    return after["pid"] or info["pid"]


def wait_stopped(rpc, names, pids, wait):
    """Poll until every one of `names` (stopping as `pids`) is down; fail naming those
    that are not."""
    deadline = time.monotonic() + wait
    looks = 0
    while True:
        late = time.monotonic() >= deadline
        if late or all(gone(p) for p in pids) or looks % ASK_ALIVE == ASK_ALIVE - 1:
            infos = {namespec_of(i): i for i in rpc.getAllProcessInfo()}
            left = [n for n in names if n in infos and infos[n]["statename"] not in STOPPED]
            if not left:
                return
            if late:
                raise Failed("; ".join(f"{n} did not stop in {wait}s: {describe(infos[n])}"
                                       for n in left))
        looks += 1
        time.sleep(POLL)


def stop(rpc, name, wait):
    """Stop `name` gracefully (supervisord sends the stop signal, then SIGKILL after
    `stopwaitsecs`) and poll until it is down."""
    pid = ask_stop(rpc, rpc.getProcessInfo(name), Forks(rpc))
    if pid is not None:
        wait_stopped(rpc, [name], [pid], wait)


def stop_group(rpc, group, wait):
    """`supervisorctl stop GROUP:*`: every process of `group` at once, each stop signal
    reaching the program (see Forks); polls until all are down."""
    infos = [i for i in rpc.getAllProcessInfo() if i["group"] == group]
    if not infos:
        raise Failed(f"{group}: ERROR (no such group)")
    forks = Forks(rpc)
    stopping = {namespec_of(i): ask_stop(rpc, i, forks) for i in infos}
    stopping = {n: pid for n, pid in stopping.items() if pid is not None}
    wait_stopped(rpc, list(stopping), list(stopping.values()), wait)
    return 0


def start(rpc, name, workers, wait):
    """Start `name`; return its pid once it serves: a worker of it has booted (`workers`
    given: a master that exits or is restarted meanwhile fails at once), or supervisord
    says RUNNING (its retries waited through, as `supervisorctl start` waits)."""
    try:
        rpc.startProcess(name, False)
    except Fault as e:
        raise Failed(f"{name} does not start: {e.faultString}") from None
    pid = rpc.getProcessInfo(name)["pid"]
    deadline = time.monotonic() + wait
    i = 0
    while True:
        if workers and pid and booted(workers, pid):
            return pid
        # The files and /proc are free; supervisord is asked when the master is gone.
        if not workers or not pid or gone(pid) or i % ASK_ALIVE == ASK_ALIVE - 1:
            info = rpc.getProcessInfo(name)
            if workers and (info["statename"] not in ("STARTING", "RUNNING")
                            or info["pid"] != pid):
                raise Failed(f"{name} does not start: {describe(info)}")
            if not workers and info["statename"] == "RUNNING":
                return info["pid"]
            if not workers and info["statename"] not in ("STARTING", "BACKOFF"):
                raise Failed(f"{name} does not start: {describe(info)}")
        if time.monotonic() >= deadline:
            info = rpc.getProcessInfo(name)
            raise Failed(f"{name} is not serving after {wait}s: {describe(info)}")
        i += 1
        time.sleep(POLL)


def all_running(rpc, pids, wait, running_at=0.0):
    """Wait until every slot is RUNNING with the pid it was started with. Before
    `running_at` (time.monotonic()), when supervisord would not yet say RUNNING, only
    the kernel is asked whether they are up."""
    deadline = time.monotonic() + wait
    while time.monotonic() < min(running_at, deadline) and not any(map(gone, pids.values())):
        time.sleep(POLL)
    while True:
        infos = {namespec_of(i): i for i in rpc.getAllProcessInfo()}
        for n, pid in pids.items():
            info = infos.get(n)
            if not info or info["statename"] not in ("STARTING", "RUNNING") or info["pid"] != pid:
                raise Failed(f"{n} died after it started: {describe(info) if info else 'gone'}")
        if all(infos[n]["statename"] == "RUNNING" for n in pids):
            return
        if time.monotonic() >= deadline:
            raise Failed(f"not RUNNING after {wait}s: "
                         + "; ".join(describe(infos[n]) for n in pids))
        time.sleep(POLL * 3)  # each look asks supervisord: every 60 ms


def restart(rpc, group, workers, start_wait, stop_wait, out=sys.stdout, startsecs=0.0):
    """The rolling restart (see the top of this file)."""
    # The slots that are down first: a RUNNING one serves while they come back.
    slots = [namespec_of(i) for i in sorted(
        (i for i in rpc.getAllProcessInfo() if i["group"] == group),
        key=lambda i: (i["statename"] == "RUNNING", namespec_of(i)))]
    if not slots:
        raise Failed(f"{group}: ERROR (no such group)")
    if len(slots) < 2:
        print(f"@@drops {group} binds its own port: connections are refused until it is "
              "back (socket: inherit avoids it)", file=out, flush=True)
        workers = None  # one process: RUNNING, as `supervisorctl start` waits for
    pids = {}
    for name in slots:
        stop(rpc, name, stop_wait)
        started = time.monotonic()
        pids[name] = start(rpc, name, workers, start_wait)
    all_running(rpc, pids, start_wait, running_at=started + startsecs)
    print("@@slot_pids " + " ".join(str(pids[n]) for n in sorted(slots)), file=out, flush=True)
    return 0


# Each command: how many arguments it takes after SOCKET COMMAND GROUP (least, most).
ARGUMENTS = {"status": (0, 0), "signal": (1, 1), "reload": (1, 1), "restart": (3, 4),
             "stop": (1, 1)}


def main(argv):
    least, most = ARGUMENTS.get(argv[1] if len(argv) > 1 else "", (None, None))
    if len(argv) < 3 or least is None or not least <= len(argv) - 3 <= most:
        print("usage: supervise.py SOCKET status GROUP | SOCKET signal GROUP SIGNAL | "
              "SOCKET reload GROUP SIGNAL | "
              "SOCKET restart GROUP WORKERS_DIR|- START_WAIT STOP_WAIT [STARTSECS] | "
              "SOCKET stop GROUP STOP_WAIT", file=sys.stderr)
        return 2
    path, command, group = argv[:3]
    reads_status = command in ("status", "reload")  # errors as supervisorctl status says them
    try:
        rpc = connect(path)
        if command == "status":
            return status(rpc, group)
        if command == "reload":
            return reload(rpc, group, argv[3])
        if command == "signal":
            return signal(rpc, group, argv[3])
        if command == "stop":
            return stop_group(rpc, group, int(argv[3]))
        workers, start_wait, stop_wait, *startsecs = argv[3:]
        return restart(rpc, group, None if workers == "-" else workers,
                       int(start_wait), int(stop_wait),
                       startsecs=float(startsecs[0]) if startsecs else 0.0)
    except Failed as e:
        print(e, file=sys.stderr)
        return 1
    except (OSError, ProtocolError, Fault, expat.ExpatError) as e:
        # As supervisorctl says it (deploytools.supervisor.parse_status reads UNKNOWN).
        why = {FileNotFoundError: "no such file", ConnectionRefusedError: "refused connection"}
        print(f"unix://{path} {why.get(type(e), e)}",
              file=sys.stdout if reads_status else sys.stderr)
        return 4 if reads_status else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
