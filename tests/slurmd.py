"""A real single-node Slurm cluster on localhost for the tests: slurmctld + slurmd + munge.

`slurm` (a session fixture; import it into a test module) reuses a cluster that already answers `sinfo`,
or, as root on Debian/Ubuntu, installs the packages with apt-get when they are missing, writes its own
slurm.conf into a scratch folder (SLURM_CONF points the daemons and every client there; /etc/slurm is
not touched), starts the daemons, waits for the node to be idle and, at the end of the session, stops
slurmctld and slurmd by PID (munged, the machine's shared authentication daemon, is left running). When it cannot (not root, no apt, a failed install or start) the tests skip
with the reason -- unless SIDPIPE_REQUIRE_SLURM=1 (set by .ci/run once the packages are installed),
where that is a failure.

Config choices (measured on Debian 12, Slurm 22.05): no cgroups (proctrack/linuxproc, task/none),
DefMemPerCPU so jobs without --mem share the node, EnforcePartLimits=ALL so an impossible request fails
at submit time instead of pending forever, RealMemory 90% of what slurmd detects.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


@dataclass
class Slurm:
    """A running cluster: its node name, and the daemons this session started (empty when reused)."""

    node: str
    folder: Path | None = None
    pids: dict[str, int] = field(default_factory=dict)

    def squeue(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of the jobs Slurm knows about."""
        out = run(["squeue", "-h", "-o", "%i|%j|%T"]).stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def log(self) -> str:
        if self.folder is None:
            return ""
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in sorted((self.folder / "log").glob("*.log")))


def run(cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def node_state() -> str:
    try:
        res = run(["sinfo", "-h", "-o", "%t"], timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def munge_works() -> bool:
    try:
        token = run(["munge", "-n"], timeout=10)
        return token.returncode == 0 and run(["unmunge"], input=token.stdout, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def install() -> str | None:
    """apt-get install the packages if a daemon is missing; None on success, else why not."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("sinfo") and shutil.which("munged"):
        return None
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            res = run(cmd, timeout=600, env=env)
        except subprocess.TimeoutExpired:
            return f"{' '.join(cmd[:2])} timed out"
        if res.returncode != 0:
            return f"{' '.join(cmd[:2])} failed: {res.stderr.strip().splitlines()[-1:] or res.returncode}"
    return None


def start_munge(folder: Path) -> int | None:
    """Start munged as user munge unless one already answers; returns the PID this started, if any."""
    if munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists() or key.stat().st_size == 0:
        key.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("mungekey"):
            run(["mungekey", "--create", "--force"], check=True)
        else:
            key.write_bytes(os.urandom(1024))
    for d in ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    Path("/etc/munge").chmod(0o700)
    Path("/run/munge").chmod(0o755)
    # as root munged refuses to start ("PRNG seed dir is insecure")
    res = run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
    if res.returncode != 0:
        raise RuntimeError(f"munged did not start: {res.stderr.strip()}")
    deadline = time.time() + 10
    while not munge_works():
        if time.time() > deadline:
            raise RuntimeError("munged started but munge -n | unmunge fails")
        time.sleep(0.1)
    pidfile = Path("/run/munge/munged.pid")
    return int(pidfile.read_text()) if pidfile.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_conf(folder: Path, node: str) -> Path:
    """slurm.conf in `folder`, on free ports: another cluster on this machine (a concurrent test session)
    keeps its own."""
    cpus = os.cpu_count() or 1
    detected = run(["slurmd", "-C"]).stdout
    real = next((int(w.split("=")[1]) for w in detected.split() if w.startswith("RealMemory=")), 2048)
    for sub in ("state", "spool", "log", "run"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=sidpipe-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MailProg=/bin/true
EnforcePartLimits=ALL
ReturnToService=2
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real * 9 // 10} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def stop(pids: dict[str, int]) -> None:
    """SIGTERM each daemon this session started (slurmd first), SIGKILL what is still alive after 15 s."""
    for name in ("slurmd", "slurmctld", "munged"):
        pid = pids.get(name)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def bring_up() -> Slurm:
    """A running cluster, or RuntimeError saying why there is none."""
    node = socket.gethostname().split(".")[0]
    if node_state() in ("idle", "mix", "alloc"):
        return Slurm(node)
    if os.geteuid() != 0:
        raise RuntimeError("no Slurm cluster answers sinfo, and starting one needs root")
    why = install()
    if why:
        raise RuntimeError(why)
    folder = Path(tempfile.mkdtemp(prefix="sidpipe-slurm-"))
    folder.chmod(0o755)
    pids: dict[str, int] = {}
    try:
        # munged is left running at the end: it is the machine's authentication service, and another test
        # session (or Slurm) on this machine may be using the same one.
        start_munge(folder)
        os.environ["SLURM_CONF"] = str(write_conf(folder, node))
        for name, cmd in (("slurmctld", ["/usr/sbin/slurmctld", "-c"]), ("slurmd", ["/usr/sbin/slurmd", "-N", node])):
            res = run(cmd)
            if res.returncode != 0:
                raise RuntimeError(f"{name} did not start: {res.stderr.strip()[-500:]}")
            pidfile = folder / "run" / f"{name}.pid"
            deadline = time.time() + 60  # slow on a loaded machine
            while not pidfile.exists() or not pidfile.read_text().strip():
                if time.time() > deadline:
                    raise RuntimeError(f"{name} wrote no PID file: {Slurm(node, folder).log()[-800:]}")
                time.sleep(0.05)
            pids[name] = int(pidfile.read_text())
        deadline = time.time() + 60
        while (state := node_state()) != "idle":
            if time.time() > deadline:
                raise RuntimeError(f"node {node} not idle after 60 s (state {state!r}): "
                                   f"{Slurm(node, folder).log()[-1500:]}")
            time.sleep(0.2)
    except BaseException:
        for name in ("slurmctld", "slurmd"):  # a daemon that wrote its PID file late is stopped too
            pidfile = folder / "run" / f"{name}.pid"
            if name not in pids and pidfile.exists() and pidfile.read_text().strip().isdigit():
                pids[name] = int(pidfile.read_text())
        stop(pids)
        os.environ.pop("SLURM_CONF", None)
        raise
    return Slurm(node, folder, pids)


@pytest.fixture(scope="session")
def slurm():
    """The running single-node cluster (see the module docstring); skips, with the reason, without one."""
    try:
        cluster = bring_up()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("SIDPIPE_REQUIRE_SLURM") == "1":
            pytest.fail(f"SIDPIPE_REQUIRE_SLURM=1 but no Slurm cluster: {exc}")
        pytest.skip(f"no Slurm cluster: {exc}")
    yield cluster
    for job_id, _, _ in cluster.squeue() if cluster.pids else []:
        run(["scancel", job_id])
    stop(cluster.pids)
    if cluster.pids:
        os.environ.pop("SLURM_CONF", None)
