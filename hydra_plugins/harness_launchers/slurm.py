"""A SLURM launcher after which every sweep job is accounted for, however it ended.

The stock submitit launcher waits for its jobs through ``sacct``. On a cluster without accounting a job
cancelled while pending stays ``UNKNOWN`` to it and the sweep waits forever, and the first job that does
not succeed aborts the wait before the others end, so the sweep never writes its summary. This launcher
submits the same way, then watches the jobs through ``squeue`` as well, waits for all of them, and records
in ``sweep.json`` how each job that left no result ended (``CANCELLED``, ``TIMEOUT``, ``NODE_FAIL``...).
A job's own outcome stays in its ``result.json``; the sweep summary and the exit code are built from both.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

POLL_S = 2.0
# squeue's states of a job that will not run on: the job ended, whatever wrote (or did not write) its result.
ENDED_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)
# A job squeue no longer lists ended longer ago than the cluster's MinJobAge.
FORGOTTEN = "ENDED"


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        try:
            endings = _wait(jobs)
        except KeyboardInterrupt:
            log.warning(
                "the sweep's SLURM jobs keep running; to stop them: scancel %s", " ".join(job.job_id for job in jobs)
            )
            raise
        returns = []
        for number, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True), start=initial_job_idx):
            returns.append(_job_return(job, list(overrides), number, endings.get(job.job_id), self._sweep_dir))
        return returns

    @property
    def _sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir))

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Submit the jobs as one SLURM array, with the stock launcher's parameters and job arguments."""
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"),
            cluster="slurm",
            slurm_max_num_timeout=params.pop("max_num_timeout", 0),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
        self._sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("SLURM sweep output dir: %s", self._sweep_dir)
        numbers = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        for number, overrides in zip(numbers, job_overrides, strict=True):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        count = len(numbers)
        return list(
            executor.map_array(
                self,
                [list(overrides) for overrides in job_overrides],
                ["hydra.sweep.dir"] * count,
                numbers,
                [f"job_id_for_{number}" for number in numbers],
                [Singleton.get_state()] * count,
            )
        )


def _queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """SLURM state of each job squeue still lists (array tasks one by one); ``None`` when squeue fails."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())


def _wait(jobs: list[Any]) -> dict[str, str]:
    """Wait until every job has ended (saying so as their count or states change: a sweep can wait hours in the
    queue); return the SLURM state of those that ended without a result file."""
    waiting = {job.job_id: job for job in jobs}
    endings: dict[str, str] = {}
    shown = ""
    while waiting:
        states = _queue_states(list(waiting))
        for job_id, job in list(waiting.items()):
            if job.paths.result_pickle.exists():
                del waiting[job_id]
                continue
            if states is None:
                continue  # squeue did not answer this time: ask again, never guess
            state = _state(states, job_id)
            if state in ENDED_STATES or state == FORGOTTEN:
                endings[job_id] = state
                del waiting[job_id]
        # Said when it changes (not when squeue did not answer: the states would read unknown, then back).
        still = [_state(states or {}, job_id) for job_id in waiting]
        if (states is not None or not waiting) and (progress := _progress(len(jobs), still)) != shown:
            log.info(progress)
            shown = progress
        if waiting:
            time.sleep(POLL_S)
    return endings


def _state(states: dict[str, str], job_id: str) -> str:
    """A job's state as squeue gave it (``COMPLETING`` of ``COMPLETING+``), ``FORGOTTEN`` where it lists none."""
    return states.get(job_id, FORGOTTEN).split()[0].rstrip("+")


def _progress(total: int, waiting: list[str]) -> str:
    """``SLURM sweep: 1 of 3 jobs ended; 1 running, 1 pending``, from the states of the jobs still waiting."""
    counts = Counter(state.lower() for state in waiting)
    still = "; " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) if counts else ""
    return f"SLURM sweep: {total - len(waiting)} of {total} jobs ended{still}"


def _job_return(job: Any, overrides: list[str], number: int, ending: str | None, sweep_dir: Path) -> JobReturn:
    """A completed ``JobReturn`` whatever the job's fate, so the sweep goes on to its summary; a job that did
    not succeed is said in one line here and recorded where the summary finds it."""
    from harness.tracking import record_job_ending

    if ending is None:
        try:
            returned: JobReturn = job.results()[0]
        except Exception as error:  # submitit's FailedJobError/UncompletedJobError: the job's own traceback
            ending = f"FAILED: {_last_line(str(error))}"
        else:
            if returned.status == JobStatus.COMPLETED:
                return returned
            ending = f"FAILED: {returned._return_value!r}"
    if ending == FORGOTTEN:
        ending = f"{FORGOTTEN} without a result (squeue no longer lists it)"
    log.error("sweep job %d (SLURM job %s) did not succeed: %s", number, job.job_id, ending)
    record_job_ending(sweep_dir, number, f"{ending} (SLURM job {job.job_id})")
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-")]
    return lines[-1] if lines else text
