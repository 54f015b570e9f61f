"""Hydra callbacks that make a multirun sweep one MLflow parent run with a child per job.

The callback runs in the launching process for every launcher (basic, joblib, submitit): it writes
``<sweep dir>/sweep.json``, opens the parent run, and at the end writes the summary table and attaches it
to the parent. Jobs find the parent through ``sweep.json``, whatever process or machine they run in.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.config.commands import StoreCommandConfig
from harness.config.convert import from_mapping
from harness.config.schema import PathsConfig
from harness.config.store import expand_sweep, sweeper_settings
from harness.errors import HarnessError, counted
from harness.report import markdown_table, sweep_rows, write_summary
from harness.report.render import sweep_runs, write_report
from harness.tracking import end_sweep, ensure_parent, finish_sweep, start_sweep
from harness.tracking.store import Store, runs_table_url, store_overrides, sync_command

log = logging.getLogger(__name__)


def _store_config(config: DictConfig) -> StoreCommandConfig:
    """The sweep's tracking and paths groups, validated as ``harness sync`` reads them."""
    groups = (item.name for item in dataclasses.fields(StoreCommandConfig))
    return from_mapping(
        StoreCommandConfig, {name: OmegaConf.to_container(config[name], resolve=True) for name in groups}
    )


def ui_hint(store: Store, paths: PathsConfig) -> str:
    """Where to see the runs: a tracking server's runs table (its address without a user or password: the
    browser asks for them), else the ``harness ui`` command that serves the store."""
    address = urllib.parse.urlsplit(store.uri)
    if address.scheme in ("http", "https"):
        base = urllib.parse.urlunsplit(address._replace(netloc=address.netloc.rpartition("@")[2])).rstrip("/")
        return f"open {runs_table_url(base, store.experiment_id)} in a browser"
    return f"open the MLflow UI with `harness ui {store_overrides(store.tracking, paths)}`"


# Sweep folders started by this (launching) process: with submitit launchers the jobs run elsewhere, so the
# command learns how they ended from their result.json files, not from its own memory.
STARTED_SWEEPS: list[Path] = []


class SweepTracking(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        STARTED_SWEEPS.append(sweep_dir)
        overrides = list(config.hydra.overrides.task)
        sweeper, params = sweeper_settings(config.hydra.sweeper)
        plan = expand_sweep(overrides, sweeper=sweeper, params=params)
        start_sweep(sweep_dir, overrides, [list(job) for job in plan.jobs] if plan else None)
        store_config = _store_config(config)
        if not store_config.tracking.enabled:
            return
        try:
            ensure_parent(Store(store_config.tracking, store_config.paths), sweep_dir)
        except HarnessError as error:
            log.warning("tracking unavailable at sweep start (%s); jobs still write result.json", error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        end_sweep(sweep_dir, "finished")
        rows = sweep_rows(sweep_dir)
        files = write_summary(rows, sweep_dir)
        print(f"\nsweep summary ({sweep_dir}):\n{markdown_table(rows)}", flush=True)
        found = sweep_runs(sweep_dir)
        report = write_report(
            found.runs, sweep_dir / "report", title=f"sweep {sweep_dir.name}", unreadable=found.unreadable
        )
        for caveat in report.caveats:
            print(f"read with care: {caveat}", flush=True)
        print(
            f"sweep report: {report.index_md} ({counted(len(report.plots), 'plot')}; index.html is self-contained)",
            flush=True,
        )
        store_config = _store_config(config)
        if not store_config.tracking.enabled:
            return
        try:
            store = Store(store_config.tracking, store_config.paths)
            parent = finish_sweep(store, sweep_dir, files, report_dir=report.folder)
            print(f"tracked sweep as MLflow parent run {parent}: {ui_hint(store, store_config.paths)}", flush=True)
        except HarnessError as error:
            later = sync_command(store_config.tracking, store_config.paths, sweep_dir)
            print(f"warning: sweep not fully tracked ({error}); later: {later}", file=sys.stderr, flush=True)
