"""Device builds: a vendor toolchain compiles the verified fp32 ONNX build, cached and parity-checked like ONNX.

The zoo's recipe gives the compiler the fp32 ONNX model and lets ``backend.dtype`` reduce it on the device, so
the base is always the harness's own fp32 build (checked against torch fp32 first). The device model is then
checked too: the parity photos, decoded as the device reads them, run through the toolchain's own runner and
are compared with torch fp32 on the same photos preprocessed the same way (on every build and every cache hit).
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from harness import __version__
from harness.backends import Toolchain, open_toolchain
from harness.config.schema import RunConfig
from harness.data.photos import sample_photos
from harness.export import cache
from harness.export.onnx_export import INPUT_NAME
from harness.export.parity import compare_features, reference_features
from harness.export.stage import cached_or_built, new_manifest
from harness.models import dinov2
from harness.preprocess import batch_of
from harness.result.build import BuildManifest, BuildResult, ParityResult, ToolchainRecord
from harness.vdsp import device_input, vdsp_params_file

log = logging.getLogger(__name__)

# The toolchain's settings that do not change what it builds (where the tools are, how long to wait for them).
NOT_BUILD_IDENTITY = ("vamc", "vamp", "compile_timeout_s", "profile_timeout_s", "percentiles", "device_ids")


def compile_for_device(config: RunConfig, model: dinov2.DinoVisionTransformer, base: BuildResult) -> BuildResult:
    """The device model for ``config`` compiled from the fp32 ONNX build ``base``, unless a valid cached copy
    exists; its parity with torch fp32 is checked through the toolchain in both cases."""
    started = time.perf_counter()
    toolchain = open_toolchain(config.backend)
    versions = toolchain.versions()
    backend = {key: value for key, value in asdict(config.backend).items() if key not in NOT_BUILD_IDENTITY}
    fields = {
        "base_artifact": base.artifact[1].cache_key,
        "precision": config.precision.name,
        "batch": config.perf.batch,
        "input_size": list(config.model.input_size),
        "toolchain": backend,
        "versions": {**versions, "harness": __version__},
    }
    key = cache.content_key(fields)
    height, width = config.model.input_size
    spec_name = f"{model.spec.name}_{config.precision.name}"
    name = (
        f"{model.spec.name}-{height}x{width}-{config.precision.name}-{config.backend.name}-b{config.perf.batch}-{key}"
    )
    folder = cache.prepare_cache_root(config.paths.path("cache") / "builds") / name

    def recheck(manifest: BuildManifest) -> ParityResult:
        return device_parity(config, model, toolchain, folder / manifest.model_file)

    build = functools.partial(
        _compile_into_cache, config, model, toolchain, base, fields=fields, key=key, spec_name=spec_name,
        folder=folder, versions=versions,
    )  # fmt: skip
    return cached_or_built(config, folder, recheck=recheck, build=build, started=started)


def _compile_into_cache(
    config: RunConfig, model: dinov2.DinoVisionTransformer, toolchain: Toolchain, base: BuildResult, *,
    fields: dict[str, object], key: str, spec_name: str, folder: Path, versions: dict[str, str],
) -> BuildManifest:  # fmt: skip
    base_path, base_manifest = base.artifact
    log.info(
        "build start artifact=%s compiler=%s base=%s", folder.name, config.backend.name, base_manifest.artifact_name
    )
    with cache.staging_for(folder) as staging:
        compiled = toolchain.compile(
            base_path, name=spec_name, input_name=INPUT_NAME, batch=config.perf.batch,
            shape=config.input_shape, precision=config.precision.name, workspace=staging, progress=config.progress,
        )  # fmt: skip
        parity = device_parity(config, model, toolchain, compiled.prefix)
        prefix = str(compiled.prefix.relative_to(staging))
        manifest = new_manifest(
            staging,
            folder,
            format=config.backend.name,
            model_file=prefix,
            key=key,
            fields=fields,
            export_time_s=compiled.run.wall_s,
            parity=parity,
            toolchain=ToolchainRecord(
                base_artifact=base_manifest.artifact_name,
                model_prefix=prefix,
                spec_file=f"{spec_name}.yaml",
                spec=compiled.spec,
                versions=versions,
                command=compiled.run.argv,
                compile_time_s=round(compiled.run.wall_s, 3),
            ),
        )
        manifest = cache.publish(staging, folder, manifest, replace=config.build.force)
    log.info("build done artifact=%s compile_time_s=%.1f", folder, compiled.run.wall_s)
    return manifest


def device_parity(
    config: RunConfig, model: dinov2.DinoVisionTransformer, toolchain: Toolchain, prefix: Path
) -> ParityResult:
    """The parity photos through the device model against torch fp32 on the same preprocessing."""
    params = config.vdsp_params
    photos = sample_photos(config.build.parity_images)
    # Photo names hold their source's folder ("skimage/astronaut"); a datalist entry is one plain file name.
    names = [name.replace("/", "-") for name, _ in photos]
    with tempfile.TemporaryDirectory(prefix="harness-parity-") as folder:
        workdir = Path(folder)
        outputs = toolchain.run_images(
            prefix, ((name, device_input(image, params)) for name, (_, image) in zip(names, photos, strict=True)),
            vdsp_params=vdsp_params_file(config.vdsp, params, workdir), workdir=workdir, batch=config.perf.batch,
            progress=config.progress,
        )  # fmt: skip
    expected = reference_features(model, batch_of([image for _, image in photos], params.output_size, params))
    actual = np.stack([outputs[name] for name in names])
    return compare_features(
        actual, expected, images=tuple(name for name, _ in photos), artifact=prefix.parent.name,
        precision=config.precision, runtime=f"{config.backend.name} {toolchain.device} (vamp --datalist)",
    )  # fmt: skip
