"""Resident memory of one ONNX Runtime stage session over many calls of varying batch size.

Between stages the cascade compacts the survivors, so every stage call has a different batch
size. ONNX Runtime plans memory per input shape when `enable_mem_pattern` is on, and keeps its
CPU arena at the largest size seen. This script runs one stage file many times with random batch
sizes, each session setting in its own process, and prints the resident memory after a few
checkpoints. The fast cascade's `SessionSettings` defaults follow from it. Usage:

    python benchmarks/ort_session_memory.py MODEL_DIR --calls 6000 --max-rows 65536
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "mem pattern on, arena on": (True, True),
    "mem pattern off, arena on": (False, True),
    "mem pattern on, arena off": (True, False),
    "mem pattern off, arena off": (False, False),
}


def resident_mib() -> float:
    """Return the current resident set size of this process from /proc (Linux only)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * 4096 / 2**20


def run_setting(stage_path: str, pattern: bool, arena: bool, calls: int, max_rows: int) -> None:
    """Call the stage `calls` times with random batch sizes and print memory checkpoints."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_mem_pattern = pattern
    options.enable_cpu_mem_arena = arena
    session = onnxruntime.InferenceSession(stage_path, options, providers=["CPUExecutionProvider"])
    widths = {node.name: node.shape[1] for node in session.get_inputs()}
    rng = np.random.default_rng(0)
    inputs = {
        name: np.abs(rng.standard_normal((max_rows, width), dtype=np.float32))
        for name, width in widths.items()
    }

    start_mib = resident_mib()
    checkpoints = {calls // 10, calls // 2, calls - 1}
    readings = []
    started = time.perf_counter()
    for call in range(calls):
        rows = int(rng.integers(1000, max_rows))
        session.run(None, {name: array[:rows] for name, array in inputs.items()})
        if call in checkpoints:
            readings.append(f"{call + 1} calls: {resident_mib() - start_mib:+.0f} MiB")
    seconds = time.perf_counter() - started
    print(f"{', '.join(readings)}; {seconds:.1f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="Model directory written by 'hdn export'.")
    parser.add_argument("--stage", default="decision_2", help="Stage file name, without .onnx.")
    parser.add_argument("--calls", type=int, default=6000, help="Stage calls per setting.")
    parser.add_argument("--max-rows", type=int, default=65536, help="Largest batch size.")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    stage_path = str(arguments.model_dir / "stages" / f"{arguments.stage}.onnx")

    if arguments.child:
        pattern, arena = (flag == "1" for flag in arguments.child)
        run_setting(stage_path, pattern, arena, arguments.calls, arguments.max_rows)
        return

    print(f"{stage_path}: resident memory growth from the session's first call on")
    for label, (pattern, arena) in SETTINGS.items():
        # A fresh process per setting, because resident memory never shrinks back.
        child = [
            sys.executable, __file__, str(arguments.model_dir), "--stage", arguments.stage,
            "--calls", str(arguments.calls), "--max-rows", str(arguments.max_rows),
            "--child", str(int(pattern)), str(int(arena)),
        ]  # fmt: skip
        completed = subprocess.run(child, capture_output=True, text=True, check=True)
        print(f"  {label}: {completed.stdout.strip()}")


if __name__ == "__main__":
    main()
