"""Parity of exported stages against PyTorch, run before an export reports success.

Inputs are real: the trained embeddings of sampled users against every item, and for later
stages the hidden embeddings that PyTorch's previous stage produced for those pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from hdn_export.stages import split_stages
from hdn_runtime.errors import ParityError
from hdn_train.models.hdn import HDN

logger = logging.getLogger(__name__)

# float32 stages of a few dozen multiply-adds per output: onnxruntime may fuse or reorder the
# sums, so absolute differences of about 1e-6 per unit of magnitude are expected.
ABSOLUTE_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-4


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_stages(
    model: HDN, model_dir: Path, manifest: dict, num_users: int = 64, seed: int = 0
) -> dict:
    """Run every exported stage in onnxruntime against PyTorch on real pairs.

    Returns:
        `{stage name: {"max_abs_diff": ..., "max_rel_diff": ..., "pairs": ...}}`.

    Raises:
        ParityError: If any output differs beyond `ABSOLUTE_TOLERANCE` plus
            `RELATIVE_TOLERANCE` times the PyTorch value; it carries every stage's maximum.
    """
    rng = np.random.default_rng(seed)
    num_all_users = model.user_embedding.num_embeddings
    num_items = model.item_embedding.num_embeddings
    users = rng.choice(num_all_users, size=min(num_users, num_all_users), replace=False)
    pair_users = torch.from_numpy(np.repeat(users, num_items))
    pair_items = torch.arange(num_items).repeat(len(users))

    with torch.no_grad():
        inputs = {
            "user_emb": model.user_embedding(pair_users),
            "item_emb": model.item_embedding(pair_items),
        }
        report: dict[str, dict] = {}
        failures: dict[str, float] = {}
        for (spec, module), entry in zip(split_stages(model), manifest["stages"]):
            feeds = {name: inputs[name] for name in spec.inputs}
            expected = module(*feeds.values())
            expected = expected if isinstance(expected, tuple) else (expected,)
            session = _session(model_dir / entry["path"])
            actual = session.run(
                list(spec.outputs), {name: value.numpy() for name, value in feeds.items()}
            )

            max_abs = max_rel = 0.0
            for name, want, got in zip(spec.outputs, expected, actual):
                want = want.numpy()
                diff = np.abs(got - want)
                max_abs = max(max_abs, float(diff.max(initial=0.0)))
                max_rel = max(
                    max_rel, float((diff / np.maximum(np.abs(want), 1e-12)).max(initial=0.0))
                )
                if np.any(diff > ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * np.abs(want)):
                    failures[f"{spec.name}.{name}"] = float(diff.max())
            report[spec.name] = {
                "max_abs_diff": max_abs,
                "max_rel_diff": max_rel,
                "pairs": int(len(pair_users)),
            }
            logger.info(
                "Stage %s: max abs diff %.3g, max rel diff %.3g over %d pairs",
                spec.name,
                max_abs,
                max_rel,
                len(pair_users),
            )
            if "hidden" in spec.outputs:
                inputs["hidden_in"] = expected[spec.outputs.index("hidden")]

    if failures:
        details = ", ".join(f"{name}: {value:.3g}" for name, value in failures.items())
        raise ParityError(
            f"onnxruntime differs from PyTorch beyond tolerance (abs {ABSOLUTE_TOLERANCE} + "
            f"rel {RELATIVE_TOLERANCE}) on {details}. The export was not written.",
            max_abs_diff=failures,
        )
    return report
