"""A throwaway single-node Slurm cluster on localhost for the orchestration test.

Needs root and Debian's slurm-wlm and munge (.ci/run installs them). The configuration is
written to /etc/slurm/slurm.conf because the Snakemake job-step plugin strips SLURM_CONF
from the job environment, so only the default location reaches `srun` inside jobs; an
existing configuration that this helper did not write is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MARKER = "# written by medtailor's test suite"
CONF = Path("/etc/slurm/slurm.conf")


class SlurmUnavailable(RuntimeError):
    pass


def _run(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def start_cluster(root: Path) -> dict:
    """Start munged, slurmctld and slurmd; return what ``stop_cluster`` needs."""
    missing = [
        t for t in ("slurmctld", "slurmd", "munged", "sinfo", "sbatch") if not shutil.which(t)
    ]
    if missing:
        raise SlurmUnavailable(
            f"Slurm is not installed (missing {missing}); apt-get install slurm-wlm munge"
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld/slurmd needs root")
    if CONF.exists() and MARKER not in CONF.read_text():
        raise SlurmUnavailable(f"{CONF} belongs to a real Slurm installation; not touching it")
    node = socket.gethostname().split(".")[0]
    memory = int(_run("slurmd", "-C").stdout.split("RealMemory=")[1].split()[0]) * 8 // 10
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge", "/etc/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    shutil.chown("/etc/munge", "munge", "munge")
    for path in ("/etc/munge/munge.key", "/var/lib/munge", "/var/log/munge", "/run/munge"):
        shutil.chown(path, "munge", "munge")
    pids = {}
    if _run("pgrep", "-x", "munged").returncode != 0:
        _run("su", "-s", "/bin/sh", "munge", "-c", "munged")
        pids["munged"] = int(_run("pgrep", "-x", "munged").stdout.split()[0])
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(
        f"""{MARKER}
ClusterName=medtailor
SlurmctldHost={node}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    for daemon in (["slurmctld"], ["slurmd", "-N", node]):
        result = _run(*daemon)
        if result.returncode != 0:
            stop_cluster({"root": root, "pids": pids})
            raise SlurmUnavailable(f"{daemon[0]} did not start: {result.stderr.strip()}")
    for _ in range(60):
        if "idle" in _run("sinfo", "-h", "-o", "%T").stdout:
            break
        time.sleep(1)
    else:
        stop_cluster({"root": root, "pids": pids})
        raise SlurmUnavailable(
            "the node never became idle: " + (root / "log" / "slurmd.log").read_text()[-2000:]
        )
    for name in ("slurmctld", "slurmd"):
        pids[name] = int((root / f"{name}.pid").read_text())
    return {"root": root, "pids": pids, "node": node}


def stop_cluster(cluster: dict) -> None:
    """Stop the daemons this helper started, by their process ids."""
    for pid in cluster["pids"].values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    for pid in cluster["pids"].values():
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    if CONF.exists() and MARKER in CONF.read_text():
        CONF.unlink()
