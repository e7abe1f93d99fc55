"""A real single-node SLURM cluster for tests: munge, MariaDB + slurmdbd, slurmctld, slurmd.

Debian's packages (slurm-wlm 22.05), configured for the tests:
accounting through slurmdbd (so the Snakemake executor plugin can use its sacct default),
four fake GPUs through gres (files that are symlinks to /dev/null; SLURM then sets
CUDA_VISIBLE_DEVICES as on a real GPU node). The node advertises 16 CPUs and 64 GB
(``SlurmdParameters=config_overrides``) so that rules asking for 4 threads and 16 GB fit
on a small machine; nothing is enforced (no cgroups), the tiny jobs just share it.

slurm.conf must live at /etc/slurm/slurm.conf (the jobstep plugin drops SLURM_CONF), so the
cluster writes /etc/slurm/{slurm,gres,slurmdbd}.conf, moving aside files already there and
restoring them on ``stop()``. Everything else (state, spool, logs, pid files, the database)
lives in a private directory. Every daemon started here is stopped by the pid in its pid
file; every command runs with a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
PROGRAMS = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "munge",
            "mariadbd", "mariadb-install-db", "mariadb"]
ETC = Path("/etc/slurm")
CLUSTER = "lvdtest"
DB_PASSWORD = "lvd-test-only"
MARK = "# written by lvd tests/slurm/cluster.py\n"


class Unavailable(RuntimeError):
    """The machine cannot host the test cluster (not root, no apt, ports taken): skip."""


class ClusterError(RuntimeError):
    """A daemon did not come up; the message carries the end of its log."""


def sh(cmd, timeout=60, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command (list or shell string) with a timeout; output captured as text."""
    shell = isinstance(cmd, str)
    res = subprocess.run(cmd, shell=shell, timeout=timeout, text=True, capture_output=True,
                         stdin=subprocess.DEVNULL, **kw)
    if check and res.returncode != 0:
        raise ClusterError(f"{cmd!r} failed ({res.returncode}): {res.stdout}{res.stderr}")
    return res


def ensure_packages(timeout=900) -> float:
    """Install the Debian packages if a program is missing; returns the seconds spent (0 if none)."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if not missing:
        return 0.0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"SLURM programs missing ({', '.join(missing)}) and cannot install them: "
                          f"needs root and apt-get (run: apt-get install -y --no-install-recommends "
                          f"{' '.join(PACKAGES)})")
    start = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-qq"], timeout=timeout, env=env)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], timeout=timeout, env=env)
    still = [p for p in PROGRAMS if shutil.which(p) is None]
    if still:
        raise ClusterError(f"after apt-get install, still missing: {still}")
    return time.monotonic() - start


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie left to a non-reaping pid 1 counts as gone


def _tail(path: Path, lines=20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(predicate, timeout: float, what: str, log: Path | None = None, poll=0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}"
                       + (f"; end of {log}:\n{_tail(log)}" if log else ""))


class Cluster:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="lvd-slurm-"))
        self.root.chmod(0o755)  # munge and mysql must reach their files below it
        self.host = socket.gethostname().split(".")[0]
        self.pidfiles: list[tuple[Path, str]] = []  # (pid file, expected program name), start order
        self.backups: list[tuple[Path, Path | None]] = []
        self.mysqld: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}

    # ---------------------------------------------------------------- start
    def start(self) -> "Cluster":
        t0 = time.monotonic()
        for port in (6817, 6818, 6819):
            if _port_open(port):
                raise Unavailable(f"port {port} is in use: a SLURM daemon already runs on this machine")
        for step in (self._configure, self._munge, self._mariadb, self._slurmdbd, self._slurm):
            s = time.monotonic()
            step()
            self.timings[step.__name__.strip("_")] = round(time.monotonic() - s, 2)
        self.timings["start_total"] = round(time.monotonic() - t0, 2)
        return self

    def _daemon(self, cmd: list[str], pidfile: Path, name: str, user: str | None = None) -> None:
        """Start a self-daemonizing program and wait for its pid file."""
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        with open(self.root / f"{name}.out", "w") as out:  # a pipe would stay open in the daemon
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 timeout=60, env=self.env)
        if res.returncode != 0:
            raise ClusterError(f"{name} failed to start ({res.returncode}): {_tail(self.root / f'{name}.out')}")
        self.pidfiles.append((pidfile, name))
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, f"{name}'s pid file {pidfile}",
                 self.root / f"{name}.log")

    def _munge(self) -> None:
        if sh("munge -n | unmunge", check=False, timeout=10).returncode == 0:
            return  # a munged already runs (not ours: left alone)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            sh(["mungekey", "--create", f"--keyfile={key}"])
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        self._daemon(["/usr/sbin/munged", f"--pid-file={run / 'munged.pid'}"], run / "munged.pid", "munged",
                     user="munge")
        wait_for(lambda: sh("munge -n | unmunge", check=False, timeout=10).returncode == 0, 20, "munge")

    def _mariadb(self) -> None:
        """A private MariaDB: own data directory, no TCP, a socket of its own (slurmdbd finds it
        through MYSQL_UNIX_PORT), so a system MariaDB, if any, is neither used nor disturbed."""
        data = self.root / "mysql"  # mysql-owned: the server writes its socket, pid and log here
        data.mkdir()
        shutil.chown(data, "mysql", "mysql")
        sock, pidfile = data / "mysqld.sock", data / "mysqld.pid"
        self.env["MYSQL_UNIX_PORT"] = str(sock)
        sh(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}", "--skip-test-db",
            "--auth-root-authentication-method=socket"], timeout=180)
        with open(self.root / "mariadb.out", "w") as out:
            self.mysqld = subprocess.Popen(
                ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}", "--skip-networking",
                 f"--socket={sock}", f"--pid-file={pidfile}", f"--log-error={data / 'mariadb.log'}",
                 "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self.pidfiles.append((pidfile, "mariadbd"))
        sql = ["mariadb", "--no-defaults", f"--socket={sock}", "-e"]
        wait_for(lambda: sh([*sql, "select 1"], check=False, timeout=10).returncode == 0, 60,
                 "MariaDB", data / "mariadb.log")
        sh([*sql, f"CREATE USER 'slurm'@'localhost' IDENTIFIED BY '{DB_PASSWORD}'; "
                  "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"])

    def _write_etc(self, name: str, text: str, mode: int) -> None:
        path = ETC / name
        ETC.mkdir(parents=True, exist_ok=True)
        backup = None
        if path.exists() and not path.read_text(errors="replace").startswith(MARK):
            backup = path.with_name(f"{name}.lvd-backup")
            os.replace(path, backup)
        self.backups.append((path, backup))
        path.write_text(MARK + text)
        path.chmod(mode)

    def _configure(self) -> None:
        """slurmdbd.conf, gres.conf and slurm.conf (sacctmgr needs slurm.conf before slurmctld runs)."""
        gpus = self.root / "gpus"
        gpus.mkdir()
        for i in range(4):
            (gpus / f"gpu{i}").symlink_to("/dev/null")  # gres refuses regular files
        (self.root / "state").mkdir()
        (self.root / "spool").mkdir()
        self._write_etc("slurmdbd.conf", "\n".join([
            "AuthType=auth/munge", "DbdHost=localhost", "SlurmUser=root",
            f"PidFile={self.root / 'slurmdbd.pid'}", f"LogFile={self.root / 'slurmdbd.log'}",
            "StorageType=accounting_storage/mysql", "StorageHost=localhost", "StorageUser=slurm",
            f"StoragePass={DB_PASSWORD}", "StorageLoc=slurm_acct_db", ""]), 0o600)
        self._write_etc("gres.conf", f"NodeName={self.host} Name=gpu File={gpus}/gpu[0-3]\n", 0o644)
        self._write_etc("slurm.conf", "\n".join([
            f"ClusterName={CLUSTER}", f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=1024",
            "SlurmdParameters=config_overrides", "MinJobAge=600", "ReturnToService=2", "KillWait=5",
            "MailProg=/bin/true", "JobAcctGatherType=jobacct_gather/linux",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
            "AccountingStorageTRES=gres/gpu", "GresTypes=gpu",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'slurmd.log'}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=65536 Gres=gpu:4 State=UNKNOWN",
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]), 0o644)

    def _slurmdbd(self) -> None:
        self._daemon(["slurmdbd"], self.root / "slurmdbd.pid", "slurmdbd")
        wait_for(lambda: sh(["sacctmgr", "-n", "list", "cluster"], check=False, timeout=10).returncode == 0,
                 60, "slurmdbd (sacctmgr list cluster)", self.root / "slurmdbd.log", poll=0.5)
        sh(["sacctmgr", "-i", "add", "cluster", CLUSTER])  # also creates account root, user root

    def _slurm(self) -> None:
        self._daemon(["slurmctld"], self.root / "slurmctld.pid", "slurmctld")
        self._daemon(["slurmd"], self.root / "slurmd.pid", "slurmd")
        wait_for(lambda: sh(["sinfo", "-h", "-o", "%t"], check=False, timeout=10).stdout.strip() == "idle",
                 60, "the node to become idle", self.root / "slurmd.log", poll=0.5)

    # ---------------------------------------------------------------- use
    def sbatch(self, *args: str, cwd: Path | None = None) -> str:
        """Submit; returns the job id."""
        res = sh(["sbatch", "--parsable", f"--output={self.root}/slurm-%j.out", *args],
                 env=self.env, cwd=cwd, timeout=30)
        return res.stdout.strip().split(";")[0]

    def output(self, job_id: str) -> str:
        return (self.root / f"slurm-{job_id}.out").read_text()

    def state(self, job_id: str) -> str:
        res = sh(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], check=False, timeout=15)
        return res.stdout.strip().split("\n")[0].split()[0] if res.stdout.strip() else ""

    def wait_job(self, job_id: str, timeout: float = 60) -> str:
        """Wait until the job ends (as sacct reports it); returns its final state."""
        done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
        wait_for(lambda: self.state(job_id) in done, timeout, f"job {job_id} to finish",
                 self.root / "slurmctld.log", poll=0.5)
        return self.state(job_id)

    def sacct_jobs(self) -> dict[str, str]:
        """{job id: job name} of every job the accounting database lists by time window.

        A job shows up here a moment after it ends (its eligible time reaches slurmdbd
        asynchronously); see ``wait_accounted``.
        """
        res = sh(["sacct", "-n", "-X", "-P", "-a", "-S", "2000-01-01", "-o", "JobID,JobName"], timeout=15)
        return dict(line.split("|", 1) for line in res.stdout.splitlines() if line)

    def wait_accounted(self, job_ids, timeout: float = 30) -> dict[str, str]:
        """``sacct_jobs()`` once it lists every id in ``job_ids``."""
        wait_for(lambda: set(job_ids) <= set(self.sacct_jobs()), timeout,
                 f"sacct to list jobs {sorted(job_ids)}", self.root / "slurmdbd.log", poll=0.5)
        return self.sacct_jobs()

    # ---------------------------------------------------------------- stop
    def stop(self) -> None:
        if any(name == "slurmctld" for _, name in self.pidfiles):
            sh(["scancel", "--full", "-u", "root"], check=False, timeout=15)
            try:
                wait_for(lambda: not sh(["squeue", "-h"], check=False, timeout=10).stdout.strip(), 30, "jobs")
            except ClusterError:
                pass
        for pidfile, name in reversed(self.pidfiles):
            self._kill(pidfile, name)
        if self.mysqld is not None:
            try:
                self.mysqld.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for path, backup in reversed(self.backups):
            path.unlink(missing_ok=True)
            if backup is not None:
                os.replace(backup, path)
        if not os.environ.get("LVD_SLURM_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self, pidfile: Path, name: str) -> None:
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return
        if name not in cmdline:  # the pid was reused by something else: leave it
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if not _alive(pid):
                return

    def logs(self) -> str:
        names = ["slurmctld.log", "slurmd.log", "slurmdbd.log", "mysql/mariadb.log", "munged.out"]
        return "\n".join(f"--- {n}\n{_tail(self.root / n)}" for n in names)
