"""Simulated hosts on one Linux machine: network namespaces joined by veth pairs to a bridge,
each link shaped with ``tc ... tbf``, and MPI ranks launched one per namespace.

    with Hosts(4, gbit=1) as hosts:            # namespaces clmh-<pid>-h0..h3 and clmh-<pid>-br
        subprocess.run(hosts.mpiexec(["python", "-m", "mpi4py", "train.py"]), env=hosts.env(), timeout=600)
        hosts.counters()                       # bytes each host's eth0 sent and received

Layout: host i is namespace ``<prefix>-h<i>`` holding ``eth0`` with 10.77.0.<i+1>/24 and
nothing else (no default route, no NAT: it can reach the other hosts and only them); the
other end of its veth pair is ``v<i>`` in namespace ``<prefix>-br``, a port of the bridge
``br0`` there. Both ends are shaped to ``gbit`` with a token bucket (tbf, ``Hosts.shape``), so
a host sends and receives at most ``gbit`` each way, as on a switch port; receive packet steering
keeps each flow on one CPU, so its packets arrive in order as on a real link (without it, TCP saw
paced packets out of order and retransmitted for nothing). The root namespace gets no
interface and no address. ``netem`` is not in this kernel, so no latency is added: a veth
hop takes tens of microseconds, a real network's tens to hundreds.

MPICH is told to leave shared memory alone (``MPI_ENV``): ranks in different namespaces still
share /dev/shm, and with MPICH's defaults UCX reaches the other rank's memory through it (an
800 KB allreduce put 14 KB on the veth links). With ``MPI_ENV``, all of it crosses them.
Needs root and iproute2 (``ip``, ``tc``). ``cleanup()`` removes every ``clmh-`` namespace
(and so its links and bridge) left by a killed run, after ending the processes inside.
"""
import json
import os
import shutil
import signal
import subprocess
import time

PREFIX = "clmh"
HERE = os.path.dirname(os.path.abspath(__file__))
SSH = os.path.join(HERE, "netns_ssh")                               # hydra's "ssh": enters a namespace
RPS_MASK = format((1 << min(os.cpu_count() or 1, 32)) - 1, "x")   # receive packet steering over every CPU
MPI_ENV = {"MPIR_CVAR_NOLOCAL": "1",                                # no shared-memory path between ranks
           "MPIR_CVAR_CH4_NETMOD": "ucx", "UCX_TLS": "tcp", "UCX_NET_DEVICES": "eth0"}


def _ip(*args, check=True, timeout=20):
    """Run ``ip ARGS``; CalledProcessError with ip's message when it fails and ``check``."""
    r = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def why_not():
    """None where namespaces can be made here, else the reason (for a test's skip)."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}`: install iproute2 (apt-get install iproute2)"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "eth0", "type", "veth", "peer", "name", "v0")
        r = subprocess.run(["tc", "-n", probe, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1gbit", "burst",
                            "256kb", "latency", "50ms"], check=False, capture_output=True, text=True, timeout=20)
        if r.returncode:
            return f"tc tbf does not work here: {r.stderr.strip()}"
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return f"cannot make network namespaces and veth pairs here: {e}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def namespaces(prefix=PREFIX):
    """Names of the existing network namespaces made by this module (``<prefix>-...``)."""
    names = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def _end_processes(ns, grace=5.0):
    """SIGTERM, then after ``grace`` seconds SIGKILL, every process inside namespace ``ns`` (all
    of them started there by this module's caller)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).split()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline and _ip("netns", "pids", ns, check=False).split():
            time.sleep(0.1)


def cleanup(prefix=PREFIX):
    """End the processes in, and delete, every namespace named ``<prefix>-...`` (deleting a
    namespace deletes its veth ends, which deletes their peers, and its bridge). Rerunnable."""
    for ns in namespaces(prefix):
        _end_processes(ns)
        _ip("netns", "del", ns, check=False)
    return namespaces(prefix)


class Hosts:
    """``n`` simulated hosts linked at ``gbit`` Gbit/s each way (a context manager: made on
    entry, removed on exit, also after an error). ``addr[i]`` is host i's address, ``ns[i]`` its
    namespace."""

    def __init__(self, n, gbit=1.0, prefix=None):
        if not 1 <= n <= 250:
            raise ValueError(f"Hosts: n must be 1..250 hosts, got {n}")
        self.n, self.gbit = n, gbit
        self.prefix = prefix or f"{PREFIX}-{os.getpid()}"
        self.bridge = f"{self.prefix}-br"
        self.ns = [f"{self.prefix}-h{i}" for i in range(n)]
        self.addr = [f"10.77.0.{i + 1}" for i in range(n)]

    def __enter__(self):
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _make(self):
        if namespaces(self.prefix):
            raise RuntimeError(f"namespaces {namespaces(self.prefix)} exist already: remove them with "
                               f"python benchmarks/multihost.py --cleanup")
        _ip("netns", "add", self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        for dev in ("lo", "br0"):
            _ip("-n", self.bridge, "link", "set", dev, "up")
        for i, ns in enumerate(self.ns):
            _ip("netns", "add", ns)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{i}", "netns", self.bridge)
            _ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0", "up")
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
                           check=False, capture_output=True, timeout=20)         # no IPv6 chatter in the counters
            _ip("-n", ns, "addr", "add", f"{self.addr[i]}/24", "dev", "eth0")
            for dev in ("lo", "eth0"):
                _ip("-n", ns, "link", "set", dev, "up")
            for where, dev in ((ns, "eth0"), (self.bridge, f"v{i}")):     # one flow, one CPU: in order
                subprocess.run(["ip", "netns", "exec", where, "sh", "-c",
                                f"echo {RPS_MASK} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"],
                               check=False, capture_output=True, timeout=20)
        self.shape(self.gbit)

    def shape(self, gbit):
        """Shape every link to ``gbit`` Gbit/s each way: tbf on the host's eth0 (what it sends) and
        on its bridge port (what it receives), over a 5 ms FIFO queue (this kernel has no fq_codel).
        The bucket holds one 64 KB segment as veth hands it over (a smaller one makes tbf cut each
        segment into 45 packets, each released by its own timer: an eight-rank allreduce at 1 Gbit/s
        then took 3x its line-rate time, a cost of the simulation), or 0.1 ms at the rate if more."""
        self.gbit = gbit
        bucket = max(68 * 1024, int(gbit * 1e9 / 8 * 1e-4))
        for i, ns in enumerate(self.ns):
            for where, dev in ((ns, "eth0"), (self.bridge, f"v{i}")):
                r = subprocess.run(["tc", "-n", where, "qdisc", "replace", "dev", dev, "root", "tbf",
                                    "rate", f"{gbit * 1000:g}mbit", "burst", str(bucket), "latency", "5ms"],
                                   check=False, capture_output=True, text=True, timeout=20)
                if r.returncode:
                    raise RuntimeError(f"tc on {where}/{dev}: {r.stderr.strip()}")

    def cut(self, i):
        """Pull host i's cable: its bridge port goes down (its processes keep running)."""
        _ip("-n", self.bridge, "link", "set", f"v{i}", "down")

    def mend(self, i, wait=10.0):
        """Plug host i's cable back in; return once its eth0 is up again (``wait`` s at most), with
        every host's neighbour cache flushed (an address that failed to resolve while the cable
        was out would answer "No route to host" for a while yet)."""
        _ip("-n", self.bridge, "link", "set", f"v{i}", "up")
        deadline = time.monotonic() + wait
        while json.loads(_ip("-n", self.ns[i], "-j", "link", "show", "eth0"))[0]["operstate"] != "UP":
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {i}'s link is still down {wait:g} s after mending it")
            time.sleep(0.05)
        for ns in self.ns:
            _ip("-n", ns, "neigh", "flush", "all", check=False)

    def pids(self, i):
        """The processes running inside host i's namespace."""
        return [int(p) for p in _ip("netns", "pids", self.ns[i], check=False).split()]

    def counters(self):
        """[(tx bytes, rx bytes)] of every host's eth0, as the kernel counts them."""
        out = []
        for ns in self.ns:
            stats = json.loads(_ip("-n", ns, "-s", "-j", "link", "show", "eth0"))[0]["stats64"]
            out.append((stats["tx"]["bytes"], stats["rx"]["bytes"]))
        return out

    def run_in(self, i, argv):
        """``argv`` as a command run inside host i's namespace."""
        return ["ip", "netns", "exec", self.ns[i], *argv]

    def mpiexec(self, argv, mpiexec="mpiexec", ranks=None):
        """The command that runs ``argv`` as ``ranks`` (default n) MPI ranks, rank r on host
        r % n, launched from host 0 by MPICH's hydra through ``netns_ssh``."""
        ranks = ranks or self.n
        hosts = ",".join(f"{a}:1" for a in self.addr[:ranks])
        return self.run_in(0, [mpiexec, "-launcher", "ssh", "-launcher-exec", SSH, "-hosts", hosts,
                               "-n", str(ranks), *argv])

    def env(self, **more):
        """os.environ plus what ``mpiexec()`` and the ranks need (MPI_ENV, the namespace map)."""
        env = dict(os.environ, **MPI_ENV, CLMH_NETNS_MAP=" ".join(f"{a}={ns}" for a, ns in zip(self.addr, self.ns)))
        env.update(more)
        return env

    def close(self):
        """End every process in the namespaces and delete them (rerunnable)."""
        cleanup(self.prefix)
