"""Time the parts of the fast cascade that benchmarks/README.md quotes, one thread each.

1. A one-output layer in ONNX Runtime: a (64, 1) right-hand side against a (1, 64) row times
   the transposed input, on 8,192 x 64 float32 rows.
2. The pre-rejection's index extraction on a 282 x 3,706 mask with half of it set: np.nonzero
   against a per-row count and np.compress over a grid of item indices.
3. np.take of 8,192 random rows of 32 float32 from a 3,706-row table.
4. A 64 x 32 hidden layer alone in ONNX Runtime, on the same 8,192 rows.
5. With a model directory: its decision_2 stage file on 8,192 random rows, and the fast
   cascade over 1,500 users at several block sizes.

Usage: python benchmarks/cascade_parts.py [MODEL_DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime
import threadpoolctl
from onnx import TensorProto, helper, numpy_helper


def best_seconds(action, calls: int = 50, repeats: int = 5) -> float:
    """Return the best mean time of `calls` calls over `repeats` rounds, after one warm-up."""
    action()
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        rounds.append((time.perf_counter() - started) / calls)
    return min(rounds)


def one_output_layer(rows: np.ndarray, weight: np.ndarray, row_form: bool) -> bytes:
    """Return an ONNX model computing rows @ weight, as a one-column product or a row product."""
    features = rows.shape[1]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", features])]
    if row_form:
        node = helper.make_node("Gemm", ["w", "x"], ["y"], transB=1)
        initializer = numpy_helper.from_array(weight.reshape(1, features), "w")
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "rows"])
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        initializer = numpy_helper.from_array(weight.reshape(features, 1), "w")
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1])
    graph = helper.make_graph([node], "layer", inputs, [output], [initializer])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def main(model_dir: str | None) -> None:
    threadpoolctl.threadpool_limits(1)
    rng = np.random.default_rng(0)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    rows = rng.normal(size=(8192, 64)).astype(np.float32)
    weight = rng.normal(size=64).astype(np.float32)
    for row_form, label in ((False, "one-column MatMul"), (True, "row Gemm")):
        session = onnxruntime.InferenceSession(
            one_output_layer(rows, weight, row_form), options, providers=["CPUExecutionProvider"]
        )
        seconds = best_seconds(lambda session=session: session.run(None, {"x": rows}))
        print(f"one-output layer, {label}: {seconds * 1e3:.3f} ms per 8,192 rows")

    users, items = 282, 3706
    decisions = rng.normal(size=(users, 32)).astype(np.float32) @ rng.normal(
        size=(32, items)
    ).astype(np.float32)
    mask = decisions <= 0
    item_grid = np.tile(np.arange(items, dtype=np.int64), users)

    def counted() -> tuple[np.ndarray, np.ndarray]:
        counts = np.count_nonzero(mask, axis=1)
        item_ids = np.compress(mask.reshape(-1), item_grid)
        return np.repeat(np.arange(users, dtype=np.int64), counts), item_ids

    print(f"2-D np.nonzero: {best_seconds(lambda: np.nonzero(mask)) * 1e3:.2f} ms per chunk")
    print(f"count + np.compress: {best_seconds(counted) * 1e3:.2f} ms per chunk")

    table = rng.normal(size=(items, 32)).astype(np.float32)
    indices = rng.integers(0, items, 8192)
    block = np.empty((8192, 32), dtype=np.float32)
    seconds = best_seconds(lambda: np.take(table, indices, axis=0, out=block, mode="clip"), 2000)
    print(f"np.take of 8,192 rows: {seconds * 1e6:.1f} µs")

    hidden_weight = rng.normal(size=(64, 32)).astype(np.float32)
    matmul = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "hidden",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 32])],
            [numpy_helper.from_array(hidden_weight, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    matmul.ir_version = 8
    session = onnxruntime.InferenceSession(
        matmul.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    seconds = best_seconds(lambda: session.run(None, {"x": rows}))
    print(f"64 x 32 hidden layer alone: {seconds * 1e3:.3f} ms per 8,192 rows")

    if model_dir is not None:
        stage = onnxruntime.InferenceSession(
            f"{model_dir}/stages/decision_2.onnx", options, providers=["CPUExecutionProvider"]
        )
        feed = {
            spec.name: rng.normal(size=(8192, spec.shape[1])).astype(np.float32)
            for spec in stage.get_inputs()
        }
        seconds = best_seconds(lambda: stage.run(None, feed))
        print(f"decision_2 stage file: {seconds * 1e3:.3f} ms per 8,192 rows")

    if model_dir is not None:
        from hdn_runtime.fast_cascade import SessionSettings
        from hdn_runtime.recommender import Recommender

        recommender = Recommender.load(
            model_dir, intra_op_threads=1, cascade="fast", session_settings=SessionSettings(1)
        )
        sample = np.arange(min(1500, recommender.num_users))

        def one_pass() -> None:
            for start in range(0, len(sample), 1024):
                recommender.recommend_indices(sample[start : start + 1024], 20)

        for block_rows in (2048, 4096, 8192, 16384):
            # Recommender.load has no block-size option, so this sets the cascade's attribute.
            recommender._cascade.block_rows = block_rows
            seconds = best_seconds(one_pass, calls=1, repeats=3)
            print(f"fast cascade, {len(sample)} users, blocks of {block_rows}: {seconds:.3f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
