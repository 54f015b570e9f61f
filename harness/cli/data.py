"""``harness data`` (download or synthesise retrieval sets), ``harness eval-features`` (revisitop metrics for
descriptors made elsewhere) and ``harness vamp-parse`` (saved vamp outputs to JSON and MLflow)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.arguments import config_or_exit, split_arguments

if TYPE_CHECKING:  # imported where used: `harness --help` stays fast
    import argparse

SYNTHETIC_FLAGS = {"images": "synthetic_images", "queries": "synthetic_queries", "seed": "synthetic_seed"}


def data(arguments: list[str]) -> int:
    """``harness data download NAME`` / ``harness data synthetic``, with ``dataset.*`` and ``paths.*`` overrides."""
    from harness.config.commands import DataCommandConfig
    from harness.config.store import OVERLAY_GROUPS
    from harness.data.datasets import DATASETS, download_dataset
    from harness.data.synthetic import check_synthetic_set, dataset_location, write_synthetic
    from harness.errors import ConfigError, HarnessError, counted

    parser = _data_parser(sorted(DATASETS))
    # Overrides anywhere, also after an option (argparse takes them only before).
    given, rest = split_arguments(arguments)
    options = parser.parse_args(rest)
    overrides = [*given, *options.overrides]
    overrides.append(f"dataset.name={options.name if options.action == 'download' else 'synthetic'}")
    if options.action == "synthetic":
        overrides += [
            f"dataset.{key}={getattr(options, flag)}"
            for flag, key in SYNTHETIC_FLAGS.items()
            if getattr(options, flag) is not None
        ]
    config = config_or_exit(DataCommandConfig, overrides, overlays=OVERLAY_GROUPS)
    if options.action == "synthetic":
        dataset = config.dataset
        try:  # a size the photos cannot make is a bad argument (exit 2), as for `harness run`
            check_synthetic_set(dataset.synthetic_images, dataset.synthetic_queries, dataset.synthetic_seed)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    root, name = dataset_location(config.dataset, config.paths)
    root = options.root or root
    try:
        if options.action == "download":
            truth = download_dataset(name, root)
        else:
            dataset = config.dataset
            truth = write_synthetic(
                root, images=dataset.synthetic_images, queries=dataset.synthetic_queries, seed=dataset.synthetic_seed
            )
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images, queries = counted(len(truth.imlist), "database image"), counted(len(truth.qimlist), "query", "queries")
    print(f"{root / name}: {images}, {queries}")
    return 0


def _data_parser(dataset_names: list[str]) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="harness data",
        description="Retrieval datasets in the revisitop layout, where runs look for them: dataset.root, else "
        "paths.data (both settable as KEY=VALUE overrides, as for harness run).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    download = actions.add_parser("download", help="fetch a Revisited Oxford/Paris dataset (resumable, verified)")
    download.add_argument("name", choices=dataset_names)
    synthetic = actions.add_parser(
        "synthetic",
        help="write the synthetic dataset made from shipped photos",
        description="Write the synthetic set a run with dataset=synthetic uses: its size and seed are "
        "dataset.synthetic_images / synthetic_queries / synthetic_seed (60, 5, 0 unless overridden, e.g. by "
        "debug=tiny: 16, 2, 0).",
    )
    for flag, key in SYNTHETIC_FLAGS.items():
        synthetic.add_argument(f"--{flag}", type=int, default=None, help=f"dataset.{key}")
    for action in (download, synthetic):
        action.add_argument(
            "--root", type=Path, default=None, help="dataset root (default: dataset.root, else paths.data)"
        )
        action.add_argument(
            "overrides",
            nargs="*",
            default=[],  # without a default argparse counts a "*" positional as required in its usage errors
            metavar="KEY=VALUE",
            help="dataset.* / paths.* overrides, debug=... or +experiment=...",
        )
    return parser


def eval_features(arguments: list[str]) -> int:
    """``harness eval-features --gnd FILE (--features F.npz | --query Q.npy --database D.npy | --folder DIR)``."""
    import argparse

    from harness.accuracy.offline import evaluate_files, write_metrics
    from harness.errors import HarnessError

    parser = argparse.ArgumentParser(
        prog="harness eval-features", description="revisitop metrics for precomputed descriptors"
    )
    parser.add_argument("--gnd", type=Path, required=True, help="gnd_<dataset>.pkl")
    parser.add_argument("--features", type=Path, help=".npz with 'query' and 'database' matrices")
    parser.add_argument("--query", type=Path, help="query descriptors [Q, D] .npy")
    parser.add_argument("--database", type=Path, help="database descriptors [N, D] .npy")
    parser.add_argument("--folder", type=Path, help="folder of per-image .npz files (vamp --path_output)")
    parser.add_argument("--normalization", choices=("per_image", "per_dimension"), default="per_image")
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    options = parser.parse_args(arguments)
    pair = (options.query, options.database)
    forms = [options.features is not None, options.folder is not None, pair != (None, None)]
    if forms.count(True) != 1 or (forms[2] and None in pair):
        parser.error("give one of --features F.npz, --query Q.npy with --database D.npy, or --folder DIR")
    try:
        report = evaluate_files(
            options.gnd, features=options.features, query=options.query, database=options.database,
            folder=options.folder, normalization=options.normalization,
        )  # fmt: skip
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in report["warnings"]:  # type: ignore[attr-defined]
        print(f"warning: {warning}", file=sys.stderr)
    for setup in ("easy", "medium", "hard"):
        values: dict[str, float] = report[setup]  # type: ignore[assignment]
        print(
            f"{setup:<6} mAP {values['map']:6.2f}  mP@1 {values['mp1']:6.2f}  mP@5 {values['mp5']:6.2f}  mP@10 {values['mp10']:6.2f}"
        )
    if options.out is not None:  # after the metrics are printed: a file that cannot be written loses none of them
        try:
            write_metrics(report, options.out)
        except HarnessError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


def vamp_parse(arguments: list[str]) -> int:
    """``harness vamp-parse [--log] [overrides] FILE...``: saved vamp outputs to JSON (and to MLflow runs)."""
    import argparse
    import json

    from harness.config.commands import StoreCommandConfig
    from harness.errors import HarnessError
    from harness.perf.vamp import parse_vamp, perf_fields

    parser = argparse.ArgumentParser(
        prog="harness vamp-parse",
        description="Parse saved vamp outputs (any version's layout) to JSON on stdout; with --log, log each as an "
        "MLflow run (once per file content) with its numbers as metrics and the file as an artifact.",
    )
    parser.add_argument("--log", action="store_true", help="also log each file to the tracking store")
    parser.add_argument("items", nargs="+", metavar="KEY=VALUE|FILE", help="overrides (tracking.uri=...) and files")
    options = parser.parse_intermixed_args(arguments)
    overrides, files = split_arguments(options.items)
    if not files:
        parser.error("no vamp output file given")
    if overrides and not options.log:
        parser.error(f"{overrides[0]}: overrides choose the tracking store, which only --log writes to")
    config = config_or_exit(StoreCommandConfig, overrides) if options.log else None
    if config is not None and not config.tracking.enabled:  # it logged all the same
        parser.error("--log with tracking.enabled=false (tracking=off): one says to log, the other not to")
    try:
        parsed = []
        for path in map(Path, files):
            try:
                text = path.read_text(errors="replace")
            except OSError as error:
                raise HarnessError(f"{path}: cannot read ({error.strerror})") from None
            vamp = parse_vamp(text, source=str(path))
            if vamp.throughput_qps is None:  # logged, it was a run without numbers
                raise HarnessError(
                    f"{path}: no 'throughput (qps)' line: a report cut short (vamp stopped before its summary)"
                )
            parsed.append((path, perf_fields(vamp)))
        print(json.dumps([{"file": str(path), **report} for path, report in parsed], indent=2, ensure_ascii=False))
        if config is not None:
            from harness.tracking import log_vamp_file
            from harness.tracking.store import Store

            store = Store(config.tracking, config.paths)
            for path, report in parsed:
                run_id, logged = log_vamp_file(store, path, report)
                print(f"{path}: {'logged as' if logged else 'already logged as'} {run_id}", file=sys.stderr)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
