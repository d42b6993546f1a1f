"""A real single-host Slurm for the tests (a harness module, not a test file).

`SlurmCluster` installs Debian's Slurm packages when they are missing (root and apt only), then
starts munged, MariaDB, slurmdbd, slurmctld and slurmd in the background, everything (configs,
state, spool, logs, pid files, the database) under one temp folder, and stops them by PID:

    with SlurmCluster() as cluster:
        proc = run_snakemake(cluster, workdir, "results/data/inventory.csv")
        rows = cluster.sacct()

The cluster mirrors the spec's reserved node (§2, §5.8) under test names (`TEST_SITE`): one node
declaring 72 CPUs, 1 TiB and 7 L40 GPUs (and a small second node in the GPU partition, a second
slurmd on this host, for jobs of two nodes) (character devices made with mknod; no driver, and
`SlurmdParameters=config_overrides` lets the node declare more than the machine has), a CPU
partition (default) and a GPU partition that only the GPU QOS may use, an account and that QOS
in slurmdbd (so sbatch validates them: a misspelt QOS fails with "Invalid qos specification"),
and a reservation of 63 cores, the train job's CPUs, so the 9 cores outside it still run the CPU
rules. Accounting (slurmdbd + MariaDB) is what the snakemake plugin's status queries need: with
no slurmdbd, `sacct` finds nothing and a run waits forever.

`run_embedded_dag(workdir)` runs the whole workflow on the embedded default once, through this
cluster when it can start (root; not turned off with CELLMAPSEG_SLURM=0), otherwise locally
(with CELLMAPSEG_REQUIRE_SLURM=1 a cluster that cannot start is an error).

Run by hand: `python tests/slurm_cluster.py [TARGET ...]` starts the cluster, runs the embedded
default (or TARGETs) through the profile in a temp folder, prints the sacct table and stops it.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
EMBEDDED_CONFIG = ROOT / "config" / "config.yaml"
# The session's whole-DAG run: the embedded default with shorter training (see the file).
DAG_CONFIGS = (EMBEDDED_CONFIG, ROOT / "tests" / "ci_training.yaml")
REQUIRE_ENV = "CELLMAPSEG_REQUIRE_SLURM"
OPT_IN_ENV = "CELLMAPSEG_SLURM"

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "srun", "sacct", "sacctmgr", "scontrol",
            "sinfo", "squeue", "scancel", "munged", "munge", "mariadbd", "mariadb-install-db",
            "mariadb")

# The node: the spec's reserved allocation (7 GPUs, 63 CPUs, 920 GiB) fits inside it.
NODE_CPUS = 72
NODE_MEM_MB = 1024 * 1024
NODE_GPUS = 7
GPU_TYPE = "l40"
RESERVED_CORES = 63
# A second, small node in the GPU partition (a second slurmd on this host, which Debian's Slurm
# allows: MULTIPLE_SLURMD): what a training job of two nodes runs on, one of its agents here.
NODE2 = "ci-node2"
NODE2_CPUS, NODE2_MEM_MB, NODE2_GPUS = 4, 64 * 1024, 2

# Faster polling than a real cluster should use (profile: 40 s / 30 s). The plugin waits this long
# after a submission and after each finished job before asking sacct again; at 40 s the ~20 short
# jobs of the embedded default would spend over 10 minutes waiting.
TEST_POLLING = ("--slurm-init-seconds-before-status-checks", "3",
                "--seconds-between-status-checks", "3")


@dataclass(frozen=True)
class Site:
    """The site names the profile takes from CELLMAPSEG_SLURM_* (profiles/slurm/config.yaml)."""

    account: str
    partition: str
    gpu_partition: str
    qos: str
    reservation: str

    def env(self) -> dict[str, str]:
        return {
            "CELLMAPSEG_SLURM_ACCOUNT": self.account,
            "CELLMAPSEG_SLURM_PARTITION": self.partition,
            "CELLMAPSEG_SLURM_GPU_PARTITION": self.gpu_partition,
            "CELLMAPSEG_SLURM_QOS": self.qos,
            "CELLMAPSEG_SLURM_RESERVATION": self.reservation,
        }


# Deliberately not the spec's names, so a run proves that the override reaches every job.
TEST_SITE = Site(account="ci_lab", partition="ci-cpu", gpu_partition="ci-l40", qos="ci_gpu",
                 reservation="ci_resv")


class SlurmError(RuntimeError):
    """The cluster could not be installed or started; the message says why (with log tails)."""


# --- installation ------------------------------------------------------------------------------

def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def why_not_startable() -> str | None:
    """None when a cluster can be started here (installed, or installable), else the reason."""
    if os.environ.get(OPT_IN_ENV) == "0" and os.environ.get(REQUIRE_ENV) != "1":
        return f"the test Slurm is turned off ({OPT_IN_ENV}=0)"
    if os.geteuid() != 0:
        return "the test Slurm needs root (daemons, mknod, apt-get); this user is " \
               f"{getpass.getuser()!r}"
    if missing_binaries() and shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing_binaries())} missing) and there is " \
               "no apt-get to install it"
    return None


def ensure_installed(log: Path | None = None) -> None:
    """apt-get install Debian's Slurm, munge and MariaDB packages if any binary is missing."""
    if not missing_binaries():
        return
    reason = why_not_startable()
    if reason:
        raise SlurmError(reason)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=300", *PACKAGES]
    out = []
    for cmd in (install, ["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        out.append(f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if proc.returncode == 0 and cmd is install and not missing_binaries():
            break
    if log is not None:
        log.write_text("\n".join(out))
    if missing_binaries():
        raise SlurmError("apt-get could not install Slurm (still missing: "
                         f"{', '.join(missing_binaries())}):\n" + "\n".join(out)[-3000:])


# --- the cluster -------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, so a test run
    that is killed (where no teardown runs) leaves no daemon behind (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: no file)"
    return f"--- {path} (last {min(n, len(lines))} lines)\n" + "\n".join(lines[-n:])


@dataclass
class SlurmCluster:
    """A single-host Slurm with accounting, under `root` (a new temp folder by default)."""

    site: Site = TEST_SITE
    root: Path | None = None
    cluster_name: str = "cellmapci"
    start_seconds: float | None = None
    _procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _own_root: bool = False

    # paths and environment

    def __post_init__(self) -> None:
        if self.root is None:
            # Not under pytest's tmp: munged needs every folder on its socket's path to be
            # searchable by everyone, and pytest's base folder is 0700.
            self.root = Path(tempfile.mkdtemp(prefix="cellmapseg-slurm-"))
            self._own_root = True
        self.root.chmod(0o755)
        self.host = socket.gethostname().split(".")[0]
        self.ports = {k: _free_port()
                      for k in ("slurmctld", "slurmd", "slurmd2", "slurmdbd", "mariadb")}

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def env(self, site: Site | None = None, base: dict[str, str] | None = None
            ) -> dict[str, str]:
        """Environment for Slurm clients and for snakemake (with the site names for the profile).

        bin/ comes first on PATH: its `srun` sets SLURM_CONF, which the jobstep plugin removes
        (it drops every inherited SLURM_* variable) before it runs `srun` inside a job.
        """
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update((site or self.site).env())
        for var in ("SNAKEMAKE_PROFILE", "SLURM_JOB_ID", "SLURM_JOBID"):
            env.pop(var, None)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    # start / stop

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> SlurmCluster:
        t0 = time.monotonic()
        ensure_installed(self.root / "apt.log")
        try:
            self._write_files()
            self._start_munge()
            self._start_mariadb()
            self._start_slurmdbd()
            self._add_associations()
            self._start_slurmctld_and_slurmd()
            self._create_reservation()
        except BaseException as exc:
            logs = "\n".join(_tail(p) for p in sorted((self.root / "log").glob("*")))
            self.stop()
            if isinstance(exc, SlurmError):
                raise SlurmError(f"{exc}\n{logs}") from exc
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop every daemon by its PID (newest first)."""
        if not self._procs:
            return
        if any(name == "slurmctld" for name, _ in self._procs):
            try:
                self.run("scancel", "--user", getpass.getuser(), check=False, timeout=20)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    q = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(1)
            except (OSError, subprocess.SubprocessError):
                pass
        while self._procs:
            name, proc = self._procs.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    def cleanup(self) -> None:
        """stop(), then remove the temp folder if this object made it."""
        self.stop()
        if self._own_root and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # queries

    SACCT_FIELDS = ("JobID", "JobName", "Partition", "Account", "QOS", "Reservation", "ReqTRES",
                    "ReqCPUS", "ReqMem", "Timelimit", "State", "ExitCode", "Submit", "Start",
                    "End", "Elapsed", "Comment")

    def sacct(self) -> list[dict[str, str]]:
        """Every job allocation (no steps) this cluster has run, one dict per job."""
        proc = self.run("sacct", "-a", "-X", "-P", "-n", "-S", "2000-01-01",
                        "--format=" + ",".join(self.SACCT_FIELDS))
        rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
        return [dict(zip(self.SACCT_FIELDS, r, strict=True)) for r in rows]

    # internals

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.root / "log" / f"{name}.out", "w")  # the daemon keeps its own copy
        proc = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)
        out.close()
        self._procs.append((name, proc))
        return proc

    def _wait(self, what: str, ready, timeout: float = 60.0, proc=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SlurmError(f"{what} exited with status {proc.returncode} while starting")
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)
        raise SlurmError(f"{what} not ready after {timeout:.0f} s")

    def _ok(self, *cmd: str) -> bool:
        return self.run(*cmd, check=False, timeout=20).returncode == 0

    def _write_files(self) -> None:
        r = self.root
        for sub in ("etc", "bin", "log", "run", "state", "spool", "munge", "dev", "mysql"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        for i in range(NODE_GPUS):  # what slurmd needs of a GPU: a device file (no driver)
            dev = r / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(195, i))
        srun = r / "bin" / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf}; export SLURM_CONF\n"
                        f"exec {shutil.which('srun') or '/usr/bin/srun'} \"$@\"\n")
        srun.chmod(0o755)
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        self.conf.write_text(f"""\
ClusterName={self.cluster_name}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports['slurmctld']}
SlurmdPort={self.ports['slurmd']}
{auth}CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports['slurmdbd']}
AccountingStoragePass=socket={self.munge_socket}
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu,gres/gpu:{GPU_TYPE}
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName={self.host} NodeAddr=127.0.0.1 Port={self.ports['slurmd']} CPUs={NODE_CPUS} \
Boards=1 SocketsPerBoard=2 CoresPerSocket={NODE_CPUS // 2} ThreadsPerCore=1 \
RealMemory={NODE_MEM_MB} Gres=gpu:{GPU_TYPE}:{NODE_GPUS} State=UNKNOWN
NodeName={NODE2} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={self.ports['slurmd2']} \
CPUs={NODE2_CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket={NODE2_CPUS} ThreadsPerCore=1 \
RealMemory={NODE2_MEM_MB} Gres=gpu:{GPU_TYPE}:{NODE2_GPUS} State=UNKNOWN
PartitionName={self.site.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName={self.site.gpu_partition} Nodes={self.host},{NODE2} Default=NO MaxTime=INFINITE \
State=UP AllowQos={self.site.qos}
""")
        (r / "etc" / "gres.conf").write_text(
            f"NodeName={self.host} Name=gpu Type={GPU_TYPE} "
            f"File={r}/dev/nvidia[0-{NODE_GPUS - 1}]\n"
            f"NodeName={NODE2} Name=gpu Type={GPU_TYPE} "
            f"File={r}/dev/nvidia[0-{NODE2_GPUS - 1}]\n")
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""\
{auth}DbdHost={self.host}
DbdAddr=127.0.0.1
DbdPort={self.ports['slurmdbd']}
SlurmUser=root
PidFile={r}/run/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mariadb']}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    def _start_munge(self) -> None:
        d = self.root / "munge"
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        proc = self._spawn("munged", [
            "munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed",
            f"--log-file={self.root}/log/munged.log", "--num-threads=2"])
        self._wait("munged", lambda: self._ok("munge", "-n", f"--socket={self.munge_socket}"),
                   timeout=20, proc=proc)

    def _start_mariadb(self) -> None:
        d = self.root / "mysql"
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={d}/data", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True)
        (self.root / "log" / "mariadb-install-db.log").write_text(install.stdout + install.stderr)
        if install.returncode != 0:
            raise SlurmError("mariadb-install-db failed")
        proc = self._spawn("mariadbd", [
            "mariadbd", "--no-defaults", f"--datadir={d}/data", f"--socket={d}/mysqld.sock",
            f"--pid-file={d}/mysqld.pid", f"--log-error={self.root}/log/mariadb.log",
            f"--port={self.ports['mariadb']}", "--bind-address=127.0.0.1", "--user=root",
            "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900"])
        self._wait("mariadbd", lambda: self._ok(
            "mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.ports["mariadb"]),
            "-u", "root", "-e", "select 1"), timeout=60, proc=proc)

    def _start_slurmdbd(self) -> None:
        proc = self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait("slurmdbd", lambda: self._ok("sacctmgr", "-n", "list", "cluster"),
                   timeout=60, proc=proc)

    def _add_associations(self) -> None:
        s, user = self.site, getpass.getuser()
        self.run("sacctmgr", "-i", "add", "cluster", self.cluster_name)
        self.run("sacctmgr", "-i", "add", "qos", s.qos)
        self.run("sacctmgr", "-i", "add", "account", s.account, f"cluster={self.cluster_name}",
                 "description=cellmapseg test account", "organization=ci")
        self.run("sacctmgr", "-i", "add", "user", user, f"account={s.account}",
                 f"cluster={self.cluster_name}", f"qos=normal,{s.qos}", "defaultqos=normal")

    def _start_slurmctld_and_slurmd(self) -> None:
        ctld = self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait("slurmctld", lambda: "UP" in self.run("scontrol", "ping", check=False,
                                                          timeout=20).stdout,
                   timeout=60, proc=ctld)
        for node in (self.host, NODE2):
            slurmd = self._spawn(f"slurmd.{node}", ["slurmd", "-D", "-N", node])
            self._wait(f"slurmd {node} (node idle)", lambda n=node: set(self.run(
                "sinfo", "-h", "-N", "-n", n, "-o", "%T", check=False, timeout=20  # a line
            ).stdout.split()) == {"idle"}, timeout=60, proc=slurmd)  # per partition

    def _create_reservation(self) -> None:
        self.run("scontrol", "create", "reservation", f"ReservationName={self.site.reservation}",
                 "StartTime=now", "Duration=UNLIMITED", f"Users={getpass.getuser()}",
                 f"Nodes={self.host}", f"CoreCnt={RESERVED_CORES}")


# --- snakemake through the profile -------------------------------------------------------------

def snakemake_command(workdir: Path, *targets: str, configfiles: tuple[Path, ...] = (
        EMBEDDED_CONFIG,), extra: tuple[str, ...] = TEST_POLLING) -> list[str]:
    """`snakemake --profile profiles/slurm` in `workdir`, on the embedded default by default."""
    return [sys.executable, "-m", "snakemake", "--profile", str(PROFILE),
            "--directory", str(workdir), "--configfile", *map(str, configfiles), *extra,
            *targets]


def local_command(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (EMBEDDED_CONFIG,)
                  ) -> list[str]:
    """The workflow without Slurm: `snakemake --cores 2` in `workdir`."""
    return [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--configfile",
            *map(str, configfiles), "--cores", "2", *args]


def local_env() -> dict[str, str]:
    """This environment without a SNAKEMAKE_PROFILE that would send jobs elsewhere."""
    return {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}


def run_local(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (EMBEDDED_CONFIG,),
              timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the workflow locally (to make inputs or check a finished run)."""
    return subprocess.run(local_command(workdir, *args, configfiles=configfiles), cwd=ROOT,
                          env=local_env(), capture_output=True, text=True, timeout=timeout)


def run_snakemake(cluster: SlurmCluster, workdir: Path, *targets: str, timeout: float = 1800,
                  site: Site | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    """Run snakemake with the slurm profile against `cluster` (site names from `site`, default
    the cluster's). On timeout it is interrupted with SIGINT, as a user would (it ignored
    SIGTERM in one measurement), which cancels its Slurm jobs; returncode is then 124."""
    cmd = snakemake_command(workdir, *targets, **kwargs)  # type: ignore[arg-type]
    return _run_interruptible(cmd, cluster.env(site), timeout)


def _run_interruptible(cmd: list[str], env: dict[str, str], timeout: float
                       ) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        code = 124
        err += f"\n[slurm_cluster: interrupted after {timeout:.0f} s]"
    return subprocess.CompletedProcess(cmd, code, out, err)


# --- the shared cluster and the embedded-default DAG (one per test session) --------------------

_shared: SlurmCluster | None = None
_shared_skip: str | None = None


def slurm_required() -> bool:
    """CELLMAPSEG_REQUIRE_SLURM=1: then no Slurm is a failure."""
    return os.environ.get(REQUIRE_ENV) == "1"


def shared_cluster() -> SlurmCluster | None:
    """The process's one test cluster, started on first use (stopped by stop_shared_cluster or
    at exit). None when it cannot start here and Slurm is not required; `shared_skip_reason()`
    says why. Raises SlurmError when it is required and cannot start."""
    global _shared, _shared_skip
    if _shared is not None or _shared_skip is not None:
        return _shared
    reason = why_not_startable()
    if reason is None:
        cluster = SlurmCluster()
        try:
            _shared = cluster.start()
            atexit.register(stop_shared_cluster)
            return _shared
        except SlurmError as exc:
            cluster.cleanup()
            reason = f"the test Slurm did not start: {exc}"
    if slurm_required():
        raise SlurmError(f"{REQUIRE_ENV}=1 but {reason}")
    _shared_skip = reason
    return None


def shared_skip_reason() -> str | None:
    return _shared_skip


def stop_shared_cluster() -> None:
    global _shared
    if _shared is not None:
        _shared.cleanup()
        _shared = None


@dataclass
class DagRun:
    """One run of `snakemake all` on the embedded default."""

    workdir: Path
    via_slurm: bool
    returncode: int
    stdout: str
    stderr: str
    duration: float
    command: list[str]
    skip_reason: str | None = None  # why it ran locally, when not via_slurm
    cluster: SlurmCluster | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


_dag: DagRun | None = None


def finished_dag() -> DagRun | None:
    """This process's embedded-default DAG run, if run_embedded_dag has already run."""
    return _dag


def run_embedded_dag(workdir: Path, timeout: float = 4800) -> DagRun:
    """Run the whole workflow (`all`) on the embedded default (with DAG_CONFIGS' shorter
    training) in `workdir`: through the shared test Slurm with profiles/slurm (only the site
    names and the config overridden) when it can start; otherwise locally with `--cores 2`,
    recording why (or SlurmError when required)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = shared_cluster()
    t0 = time.monotonic()
    if cluster is not None:
        cmd = snakemake_command(workdir, "all", configfiles=DAG_CONFIGS)
        proc = _run_interruptible(cmd, cluster.env(), timeout)
    else:
        cmd = local_command(workdir, "all", configfiles=DAG_CONFIGS)
        proc = _run_interruptible(cmd, local_env(), timeout)
    global _dag
    _dag = DagRun(workdir=workdir, via_slurm=cluster is not None, returncode=proc.returncode,
                  stdout=proc.stdout, stderr=proc.stderr, duration=time.monotonic() - t0,
                  command=cmd, skip_reason=shared_skip_reason(), cluster=cluster)
    return _dag


def _main(argv: list[str]) -> int:
    targets = argv or ["all"]
    with SlurmCluster() as cluster:
        print(f"cluster up in {cluster.start_seconds:.1f} s under {cluster.root}", flush=True)
        with tempfile.TemporaryDirectory(prefix="cellmapseg-dag-") as wd:
            t0 = time.monotonic()
            proc = run_snakemake(cluster, Path(wd), *targets, timeout=3600)
            print(proc.stdout[-5000:], proc.stderr[-8000:], sep="\n")
            print(f"snakemake exit {proc.returncode} after {time.monotonic() - t0:.0f} s")
            for row in cluster.sacct():
                print(" ".join(f"{k}={v}" for k, v in row.items()))
        code = proc.returncode
    return code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
