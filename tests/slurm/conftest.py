"""A throwaway one-node SLURM cluster (munged, slurmctld, slurmd) in a temp folder, torn down by PID.

Needs Debian's ``slurmctld slurmd slurm-client munge`` and root (``.ci/run`` installs them when it runs as
root); elsewhere the SLURM tests skip with that reason. ``SLURM_CONF`` is exported for the client commands
and for the harness processes the tests start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")
INSTALL = "apt-get install slurmctld slurmd slurm-client munge (as root)"
START_ATTEMPTS = 3


@dataclass(frozen=True)
class SlurmCluster:
    folder: Path
    conf: Path
    environment: dict[str, str]

    def squeue(self) -> list[tuple[str, str]]:
        """(job id, state code) of every queued or running job, array tasks one by one."""
        done = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %t"], capture_output=True, text=True, env=self.environment, check=True
        )
        return [tuple(line.split()) for line in done.stdout.splitlines() if line.strip()]  # type: ignore[misc]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return f"SLURM tests need root to run the daemons; install with: {INSTALL}"
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    return f"SLURM tests need {', '.join(absent)}: {INSTALL}" if absent else None


def _config(folder: Path, ctld_port: int, node_port: int) -> str:
    host = socket.gethostname()
    return f"""ClusterName=harness-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _kill_pid_file(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _start(folder: Path, environment: dict[str, str]) -> bool:
    """Start slurmctld and slurmd on freshly chosen ports; True once the node is idle."""
    conf = Path(environment["SLURM_CONF"])
    conf.write_text(_config(folder, free_port(), free_port()))
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([daemon, "-f", str(conf)], env=environment, check=True, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=environment)
        if done.stdout.strip() == "idle":
            return True
        time.sleep(0.5)
    for pid_file in ("slurmd.pid", "slurmctld.pid"):
        _kill_pid_file(folder / pid_file)
    return False


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool"):
        (folder / name).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    environment = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    subprocess.run(
        ["munged", f"--key-file={key}", f"--socket={folder}/munge.sock", f"--pid-file={folder}/munged.pid",
         f"--log-file={folder}/munged.log", f"--seed-file={folder}/munge.seed", "--force"],
        check=True, timeout=30,
    )  # fmt: skip
    previous = os.environ.get("SLURM_CONF")
    try:
        # A port chosen free can be taken by the time the daemon binds it: choose again and retry.
        if not any(_start(folder, environment) for _ in range(START_ATTEMPTS)):
            pytest.fail(f"the one-node SLURM cluster did not come up: {(folder / 'slurmctld.log').read_text()[-2000:]}")
        os.environ["SLURM_CONF"] = environment["SLURM_CONF"]
        yield SlurmCluster(folder=folder, conf=folder / "slurm.conf", environment=environment)
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _kill_pid_file(folder / pid_file)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
