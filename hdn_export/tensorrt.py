"""Build one TensorRT engine per stage of an exported model and record them in its manifest.

`export_tensorrt` writes the ONNX model directory with `hdn_export.onnx.export_onnx`, then
adds `engines/<stage>.plan`, checks every engine against its ONNX stage in ONNX Runtime, and
records the engines under the manifest's `"tensorrt"` key (see
`hdn_runtime.backends.engine_record`). tensorrt and cuda-python (or CuPy) are imported only once
`check_trt_available` has found them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from hdn_export.onnx import MODEL_FORMAT, export_onnx
from hdn_runtime.backends.cuda_runtime import CudaRuntime, GpuProperties, load_cuda_runtime
from hdn_runtime.backends.engine_record import (
    PRECISIONS,
    EngineEntry,
    EngineRecord,
    engine_path,
)
from hdn_runtime.backends.onnxruntime import OnnxRuntimeBackend
from hdn_runtime.backends.tensorrt import (
    INSTALL_HINT,
    TensorRTBackend,
    import_tensorrt,
    make_tensorrt_logger,
    tensorrt_unavailable_reason,
)
from hdn_runtime.cascade import DEFAULT_MAX_CANDIDATES
from hdn_runtime.errors import BackendUnavailableError, ExportError, ParityError
from hdn_runtime.manifest import file_sha256, read_manifest
from hdn_runtime.parity import TOLERANCES, compare_stages, pair_inputs, sample_users
from hdn_runtime.tables import load_tables
from hdn_train import checkpoint

logger = logging.getLogger(__name__)

# Default optimisation profile over the batch axis (rows = (user, item) pairs):
# - min 1: a decision stage may pass a single survivor to the next stage.
# - opt: the catalogues of OPT_USERS users, a typical online request, which is the batch
#   TensorRT times its kernels for.
# - max: the cascade's default chunk, DEFAULT_MAX_CANDIDATES pairs, or one user's catalogue when
#   that is larger, because a chunk contains at least one user. No request at the default
#   Recommender settings is then split. MAX_BATCH_CAP bounds device memory: engine buffers are
#   allocated at the max, and one float32 (rows, 32) buffer takes 512 MiB at 2**22 rows.
OPT_USERS = 16
MAX_BATCH_CAP = 1 << 22


def profile_shapes(
    num_items: int,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
) -> dict[str, int]:
    """Return the batch sizes of the engines' optimisation profile.

    Values left as None take the defaults described at OPT_USERS and MAX_BATCH_CAP, moved as
    needed to stay ordered around the values given.

    Args:
        num_items: Catalogue size I of the model, >= 1.
        min_batch: Smallest batch the engines accept.
        opt_batch: Batch TensorRT tunes for.
        max_batch: Largest batch per engine call; the runtime splits larger batches.

    Returns:
        `{"min": ..., "opt": ..., "max": ...}`.

    Raises:
        ValueError: A value is not a positive integer, or min <= opt <= max does not hold.
    """
    if not _is_positive_int(num_items):
        raise ValueError(f"num_items must be a positive integer, got {num_items!r}.")
    check_batch_options(min_batch, opt_batch, max_batch)

    given = [value for value in (min_batch, opt_batch, max_batch) if value is not None]
    default_max = min(max(DEFAULT_MAX_CANDIDATES, num_items), MAX_BATCH_CAP)
    maximum = max_batch if max_batch is not None else max([default_max, *given])
    minimum = min_batch if min_batch is not None else min([1, *given])
    default_opt = min(num_items * OPT_USERS, maximum)
    optimum = opt_batch if opt_batch is not None else max(default_opt, minimum)
    return {"min": minimum, "opt": optimum, "max": maximum}


def check_batch_options(
    min_batch: int | None, opt_batch: int | None, max_batch: int | None
) -> None:
    """Raise ValueError unless the given batch sizes are positive and ordered min <= opt <= max.

    None values are not checked, so this runs before the catalogue size is known.
    """
    named = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    for name, value in named.items():
        if value is not None and not _is_positive_int(value):
            raise ValueError(
                f"The {name} batch of the TensorRT profile must be a positive integer, got "
                f"{value!r}."
            )
    given = {name: value for name, value in named.items() if value is not None}
    values = list(given.values())
    if values != sorted(values):
        shown = ", ".join(f"{name}={value}" for name, value in given.items())
        raise ValueError(
            f"The TensorRT batch profile must satisfy 1 <= min <= opt <= max, got {shown}. "
            "Pass --min-batch <= --opt-batch <= --max-batch."
        )


def check_trt_available(device_id: int = 0) -> None:
    """Raise BackendUnavailableError unless TensorRT can build and run engines here.

    Raises:
        BackendUnavailableError: tensorrt, cuda-python and CuPy, or a CUDA GPU is missing.
            The message names each missing piece and how to install the GPU extra.
    """
    reason = tensorrt_unavailable_reason(device_id)
    if reason is not None:
        raise BackendUnavailableError(
            f"--format trt needs TensorRT and a CUDA GPU, but {reason}. {INSTALL_HINT} "
            "Or export with --format onnx, which needs neither."
        )


def default_timing_cache_path(tensorrt_version: str, gpu: GpuProperties) -> Path:
    """Return the timing cache file shared by every export for this TensorRT version and GPU.

    TensorRT rejects a timing cache from another version or device, so the name contains both.
    The folder is `$XDG_CACHE_HOME/hdn/tensorrt`, or `~/.cache/hdn/tensorrt`.
    """
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    capability = gpu.compute_capability.replace(".", "")
    return cache_home / "hdn" / "tensorrt" / f"timing-{tensorrt_version}-sm{capability}.cache"


def export_tensorrt(
    run_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    precision: str = "fp32",
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    timing_cache: str | Path | None = None,
    verify_users: int = 64,
    seed: int = 0,
    device_id: int = 0,
) -> dict:
    """Export a run to an ONNX model directory with one TensorRT engine per stage.

    Checks that TensorRT and a GPU are usable before doing anything. The directory appears
    only once every ONNX stage matches PyTorch and every engine matches its ONNX stage.

    Args:
        run_dir: A run directory written by `hdn train`.
        out_dir: Directory to create; it must not exist unless `overwrite`.
        overwrite: Replace an existing `out_dir`.
        precision: "fp32", or "fp16" to let TensorRT use half precision inside the engines
            (inputs and outputs stay float32).
        min_batch: Smallest batch of the optimisation profile; see `profile_shapes`.
        opt_batch: Batch TensorRT tunes for.
        max_batch: Largest batch per engine call.
        timing_cache: Timing cache file, read if present and written back after the builds
            so later builds reuse the kernel timings. None uses `default_timing_cache_path`.
        verify_users: Users whose pairs with every item feed both parity checks.
        seed: Seed for choosing those users.
        device_id: CUDA device to build on.

    Returns:
        The manifest as written, with the engine record under `"tensorrt"`.

    Raises:
        BackendUnavailableError: TensorRT, cuda-python or a GPU is missing.
        ValueError: `precision` or a batch size is invalid.
        FileExistsError: `out_dir` exists and `overwrite` is False.
        ExportError: TensorRT cannot parse a stage or build an engine.
        ParityError: An ONNX stage or an engine differs beyond tolerance.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
    check_batch_options(min_batch, opt_batch, max_batch)
    check_trt_available(device_id)
    out_dir = checkpoint.check_output_directory(out_dir, overwrite, MODEL_FORMAT)

    trt = import_tensorrt()
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise BackendUnavailableError(
            f"--precision fp16 sets TensorRT's FP16 builder flag, which TensorRT "
            f"{trt.__version__} no longer has (TensorRT 11 removed it). Install TensorRT 10 "
            "with pip install 'hdn[gpu]', or export with --precision fp32."
        )
    cuda = load_cuda_runtime()
    gpu = cuda.device_properties(device_id)
    cache_path = (
        Path(timing_cache) if timing_cache else default_timing_cache_path(trt.__version__, gpu)
    )
    started = time.perf_counter()
    with checkpoint.staged_directory(
        out_dir, overwrite=overwrite, expected_format=MODEL_FORMAT
    ) as staging:
        # export_onnx replaces the empty staging folder with its own, complete one.
        manifest = export_onnx(
            run_dir, staging, overwrite=True, verify_users=verify_users, seed=seed
        )
        profile = profile_shapes(manifest["num_items"], min_batch, opt_batch, max_batch)
        engines = build_engines(trt, staging, manifest, profile, precision, cache_path, device_id)
        parity = check_engines(
            trt, cuda, staging, engines, precision, verify_users, seed, device_id
        )
        record = EngineRecord(
            version=trt.__version__,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=precision,
            profile=profile,
            engines=tuple(engines),
            parity=parity,
        )
        manifest["tensorrt"] = record.to_json(staging)
        checkpoint.write_json(staging / "manifest.json", manifest)
    logger.info(
        "Exported %s with TensorRT engines to %s in %.1fs",
        run_dir,
        out_dir,
        time.perf_counter() - started,
    )
    return manifest


def build_engines(
    trt,
    model_dir: Path,
    manifest: dict,
    profile: dict[str, int],
    precision: str,
    timing_cache_path: Path,
    device_id: int = 0,
) -> list[EngineEntry]:
    """Build `engines/<stage>.plan` for every stage of a model directory, sharing one cache.

    Args:
        trt: The tensorrt module.
        model_dir: Model directory whose manifest lists the ONNX stages.
        manifest: That manifest, as a dict.
        profile: Batch sizes from `profile_shapes`.
        precision: "fp32" or "fp16".
        timing_cache_path: Timing cache file, read if present, then written back.
        device_id: CUDA device to build on.

    Returns:
        One entry per stage, in cascade order.

    Raises:
        ExportError: TensorRT cannot parse a stage or build its engine.
    """
    trt_logger = make_tensorrt_logger(trt)
    builder = trt.Builder(trt_logger)
    # The cache's config is kept alive with it for the whole build.
    cache_config, timing_cache = _load_timing_cache(builder, timing_cache_path)

    (model_dir / "engines").mkdir(exist_ok=True)
    entries = []
    for stage in manifest["stages"]:
        started = time.perf_counter()
        logger.info("Building the %s engine for stage %s", precision, stage["name"])
        plan = engine_from_onnx(
            trt, builder, trt_logger, model_dir / stage["path"], profile, precision, timing_cache
        )
        path = engine_path(model_dir, stage["name"])
        path.write_bytes(plan)
        entries.append(EngineEntry(stage["name"], path, file_sha256(path)))
        logger.info(
            "Built the engine for stage %s in %.1fs (%d bytes)",
            stage["name"],
            time.perf_counter() - started,
            len(plan),
        )

    _save_timing_cache(timing_cache, timing_cache_path)
    del cache_config
    return entries


def engine_from_onnx(
    trt,
    builder,
    trt_logger,
    onnx_path: Path,
    profile: dict[str, int],
    precision: str,
    timing_cache,
) -> bytes:
    """Parse one ONNX stage and build its serialized engine with one batch profile.

    Raises:
        ExportError: The parser or the builder fails; the message quotes TensorRT's errors.
    """
    network = builder.create_network(0)  # TensorRT 10 networks always have explicit batch
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    optimization_profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        trailing = tuple(tensor.shape)[1:]
        optimization_profile.set_shape(
            tensor.name,
            (profile["min"], *trailing),
            (profile["opt"], *trailing),
            (profile["max"], *trailing),
        )
    config.add_optimization_profile(optimization_profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and rounds matrix products to 10-bit mantissas.
        config.clear_flag(trt.BuilderFlag.TF32)
    if not config.set_timing_cache(timing_cache, False):
        logger.warning("TensorRT did not accept the timing cache; this build times kernels anew")

    trt_logger.errors.clear()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errors = "; ".join(trt_logger.errors) or "no error was reported"
        raise ExportError(f"TensorRT {trt.__version__} failed to build {onnx_path}: {errors}")
    return bytes(plan)


def check_engines(
    trt,
    cuda: CudaRuntime,
    model_dir: Path,
    engines: list[EngineEntry],
    precision: str,
    num_users: int,
    seed: int,
    device_id: int = 0,
) -> dict[str, dict]:
    """Compare every engine with its ONNX stage in ONNX Runtime on the CPU.

    Returns:
        `{stage name: {"max_abs_diff", "max_rel_diff", "pairs", "passed"}}`.

    Raises:
        ParityError: An engine differs beyond `TOLERANCES[precision]`; it carries every
            stage's maximum absolute difference.
    """
    manifest = read_manifest(model_dir)
    tables = load_tables(manifest)
    user_indices = sample_users(manifest.num_users, manifest.num_items, num_users, seed)
    tolerance = TOLERANCES[precision]

    reference, candidate = [], []
    try:
        for stage, entry in zip(manifest.stages, engines):
            reference.append(OnnxRuntimeBackend(stage.path))
            candidate.append(TensorRTBackend(entry.path, device_id, trt, cuda))
        stage_names = [stage.name for stage in manifest.stages]
        inputs = pair_inputs(tables, user_indices)
        report = compare_stages(stage_names, reference, candidate, inputs, tolerance)
    finally:
        for backend in [*reference, *candidate]:
            backend.close()

    failures = {stage.name: stage.max_abs_diff for stage in report if not stage.passed}
    if failures:
        details = ", ".join(f"{name}: {value:.3g}" for name, value in failures.items())
        raise ParityError(
            f"The {precision} TensorRT engines differ from ONNX Runtime beyond tolerance "
            f"(abs {tolerance.absolute} + rel {tolerance.relative}) on {details}. The export "
            "was not written. Try --precision fp32, or report the stage and its difference.",
            max_abs_diff={stage.name: stage.max_abs_diff for stage in report},
        )
    return {stage.name: stage.to_json() for stage in report}


def _load_timing_cache(builder, path: Path):
    config = builder.create_builder_config()
    serialized = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(serialized)
    if cache is None and serialized:
        logger.warning("Timing cache %s is unreadable by this TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
    logger.info("Timing cache %s: %s", path, "reused" if serialized else "new")
    return config, cache


def _save_timing_cache(cache, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(bytes(cache.serialize()))
    os.replace(temporary, path)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
