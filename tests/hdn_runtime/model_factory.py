"""Write small synthetic exported model directories, and run a plain-loop reference cascade.

The stage files are built with `onnx.helper` from numpy weights, so no torch is needed. All
weights and embeddings are small integers, and `make_synthetic_model` checks that every
intermediate value stays below 2**24 in magnitude. float32 then represents each sum exactly
in any order, so ONNX Runtime and the numpy reference agree bit for bit and ties are common,
which exercises the tie-breaking rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

OPSET = 17
IR_VERSION = 8
DEFAULT_GAMMAS = (0.5, 0.75, 0.875)
# Size of the session-wide `synthetic_model` fixture.
NUM_USERS = 12
NUM_ITEMS = 40
_EXACT_FLOAT32_LIMIT = 2**24


@dataclass(frozen=True)
class SyntheticModel:
    """Weights and tables of a synthetic model, indexed like the exported files.

    Attributes:
        user_embedding: float32, shape (U, d).
        item_embedding: float32, shape (I, d).
        decision_weights: theta_n per decision stage, float32, shape (d,) then (d + h,).
        hidden_weights: W_n per decision stage, float32, shape (h, d) then (h, d + h).
        score_weight: w, float32, shape (d + h,).
        seen_items: Sorted training items of each user.
        item_popularity: int64, shape (I,).
        user_ids: External user ids; numeric strings, so ints match them too.
        item_ids: External item ids.
        gammas: One rejection ratio per decision stage.
    """

    user_embedding: np.ndarray
    item_embedding: np.ndarray
    decision_weights: list[np.ndarray]
    hidden_weights: list[np.ndarray]
    score_weight: np.ndarray
    seen_items: list[list[int]]
    item_popularity: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    gammas: tuple[float, ...]

    @property
    def num_users(self) -> int:
        return len(self.user_embedding)

    @property
    def num_items(self) -> int:
        return len(self.item_embedding)

    @property
    def embedding_dim(self) -> int:
        return self.user_embedding.shape[1]

    @property
    def hidden_dim(self) -> int:
        return self.score_weight.shape[0] - self.embedding_dim


@dataclass(frozen=True)
class ReferenceResult:
    """Output of `reference_recommend` for one user."""

    item_indices: list[int]
    scores: list[float]
    candidate_count: int
    survivor_counts: list[int]


def make_synthetic_model(
    num_users: int,
    num_items: int,
    d: int = 8,
    h: int = 8,
    n_decisions: int = 3,
    seed: int = 0,
    gammas: tuple[float, ...] | None = None,
) -> SyntheticModel:
    """Draw integer weights and tables for a model with n_decisions decision stages."""
    rng = np.random.default_rng(seed)

    def integers(low: int, high: int, shape: tuple[int, ...]) -> np.ndarray:
        return rng.integers(low, high + 1, size=shape).astype(np.float32)

    decision_weights, hidden_weights = [], []
    for stage_index in range(n_decisions):
        features = d if stage_index == 0 else d + h
        decision_weights.append(integers(-2, 2, (features,)))
        hidden_weights.append(integers(-1, 1, (h, features)))

    # Each user has seen about 20% of the catalogue; user 0 has seen nothing.
    seen_items = [[] for _ in range(num_users)]
    for user in range(1, num_users):
        num_seen = int(rng.integers(1, max(2, num_items // 5) + 1))
        seen_items[user] = sorted(rng.choice(num_items, size=num_seen, replace=False).tolist())
    seen_flat = np.array([item for items in seen_items for item in items], dtype=np.int64)

    model = SyntheticModel(
        user_embedding=integers(-2, 2, (num_users, d)),
        item_embedding=integers(-2, 2, (num_items, d)),
        decision_weights=decision_weights,
        hidden_weights=hidden_weights,
        score_weight=integers(-2, 2, (d + h,)),
        seen_items=seen_items,
        item_popularity=np.bincount(seen_flat, minlength=num_items).astype(np.int64),
        user_ids=[str(1000 + user) for user in range(num_users)],
        item_ids=[f"item-{item}" for item in range(num_items)],
        gammas=tuple(gammas) if gammas is not None else DEFAULT_GAMMAS[:n_decisions],
    )
    check_exact_in_float32(model)
    return model


def check_exact_in_float32(model: SyntheticModel) -> None:
    """Raise AssertionError if a sum inside any stage, for any pair, could round in float32.

    Every value is an integer, so a dot product is exact when the sum of its absolute terms
    stays below 2**24. Hidden states are computed for all pairs, a superset of any survivors.
    """
    user_embedding = model.user_embedding.astype(np.float64)
    item_embedding = model.item_embedding.astype(np.float64)
    products = user_embedding[:, None, :] * item_embedding[None, :, :]  # (U, I, d)
    features = products
    bounds = [np.abs(products).max()]
    for theta, weight in zip(model.decision_weights, model.hidden_weights):
        weight = weight.astype(np.float64)
        bounds.append((np.abs(features) @ np.abs(theta)).max())
        bounds.append((np.abs(features) @ np.abs(weight).T).max())
        hidden = np.maximum(features @ weight.T, 0.0)
        features = np.concatenate([products, hidden], axis=-1)
    bounds.append((np.abs(features) @ np.abs(model.score_weight)).max())
    assert max(bounds) < _EXACT_FLOAT32_LIMIT, f"synthetic sums reach {max(bounds)}, not exact"


def write_model_dir(model_dir: str | Path, model: SyntheticModel) -> Path:
    """Write `model` in the exported directory layout, with a manifest and checksums."""
    model_dir = Path(model_dir)
    (model_dir / "stages").mkdir(parents=True, exist_ok=True)
    d, h = model.embedding_dim, model.hidden_dim

    stage_entries = []
    for stage_index, (theta, weight) in enumerate(
        zip(model.decision_weights, model.hidden_weights)
    ):
        name = f"decision_{stage_index + 1}"
        graph = _decision_graph(name, theta, weight, d, h, has_hidden_input=stage_index > 0)
        stage_entries.append(_write_stage(model_dir, name, "decision", graph))
    stage_entries.append(_write_stage(model_dir, "score", "score", _score_graph(model, d, h)))

    indptr = np.zeros(model.num_users + 1, dtype=np.int64)
    np.cumsum([len(items) for items in model.seen_items], out=indptr[1:])
    tables = {
        "user_embedding": model.user_embedding,
        "item_embedding": model.item_embedding,
        "seen_indptr": indptr,
        "seen_indices": np.array([i for items in model.seen_items for i in items], dtype=np.int64),
        "item_popularity": model.item_popularity,
    }
    save_file(tables, str(model_dir / "tables.safetensors"))
    (model_dir / "user_ids.json").write_text(json.dumps(model.user_ids))
    (model_dir / "item_ids.json").write_text(json.dumps(model.item_ids))

    manifest = {
        "format": "hdn-model",
        "format_version": 1,
        "hdn_version": "0.1.0",
        "embedding_dim": d,
        "hidden_dim": h,
        "num_users": model.num_users,
        "num_items": model.num_items,
        "gammas": list(model.gammas),
        "stages": stage_entries,
        "files": {
            key: {"path": path, "sha256": sha256_of(model_dir / path)}
            for key, path in (
                ("tables", "tables.safetensors"),
                ("user_ids", "user_ids.json"),
                ("item_ids", "item_ids.json"),
            )
        },
        "source_run": "runs/synthetic",
        "created": "2024-01-01T00:00:00+00:00",
    }
    write_manifest(model_dir, manifest)
    return model_dir


def write_synthetic_model(
    model_dir: str | Path,
    num_users: int,
    num_items: int,
    d: int = 8,
    h: int = 8,
    n_decisions: int = 3,
    seed: int = 0,
) -> SyntheticModel:
    """Draw a synthetic model, write it to `model_dir`, and return its weights."""
    model = make_synthetic_model(num_users, num_items, d, h, n_decisions, seed)
    write_model_dir(model_dir, model)
    return model


def reject_everything(model: SyntheticModel) -> SyntheticModel:
    """Return a copy whose first decision stage rejects every pair.

    Embeddings become positive and theta_1 positive, so theta_1 . (u * v) > 0 for all pairs.
    """
    first_theta = np.abs(model.decision_weights[0]) + 1
    rejecting_model = dataclasses.replace(
        model,
        user_embedding=np.abs(model.user_embedding) + 1,
        item_embedding=np.abs(model.item_embedding) + 1,
        decision_weights=[first_theta, *model.decision_weights[1:]],
    )
    check_exact_in_float32(rejecting_model)
    return rejecting_model


def reference_recommend(
    model: SyntheticModel, user: int, k: int, exclude_seen: bool = True, rule: str = "sign"
) -> ReferenceResult:
    """Run the cascade for one user with plain Python loops over items, in float64."""
    user_vector = model.user_embedding[user].astype(np.float64)
    seen = set(model.seen_items[user]) if exclude_seen else set()
    survivors = [item for item in range(model.num_items) if item not in seen]
    candidate_count = len(survivors)

    hidden_of = {}
    survivor_counts = []
    for stage_index, (theta, weight) in enumerate(
        zip(model.decision_weights, model.hidden_weights)
    ):
        decision_of, next_hidden_of = {}, {}
        for item in survivors:
            features = user_vector * model.item_embedding[item]
            if stage_index > 0:
                features = np.concatenate([features, hidden_of[item]])
            decision_of[item] = float(theta @ features)
            next_hidden_of[item] = np.maximum(weight @ features, 0.0)

        if rule == "sign":
            survivors = [item for item in survivors if not decision_of[item] > 0]
        else:
            keep_share = 1 - Fraction(str(model.gammas[stage_index]))
            quota = math.ceil(keep_share * candidate_count)
            by_decision = sorted(survivors, key=lambda item: (decision_of[item], item))
            survivors = sorted(by_decision[:quota])
        hidden_of = next_hidden_of
        survivor_counts.append(len(survivors))

    score_of = {}
    for item in survivors:
        features = np.concatenate([user_vector * model.item_embedding[item], hidden_of[item]])
        score_of[item] = float(model.score_weight @ features)
    ranked = sorted(survivors, key=lambda item: (-score_of[item], item))[:k]
    return ReferenceResult(
        item_indices=ranked,
        scores=[score_of[item] for item in ranked],
        candidate_count=candidate_count,
        survivor_counts=survivor_counts,
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest_json(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text())


def write_manifest(model_dir: Path, manifest: dict) -> None:
    (Path(model_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2))


def refresh_checksums(model_dir: Path) -> None:
    """Recompute every sha256 in the manifest, so a deliberately changed file passes the check."""
    manifest = read_manifest_json(model_dir)
    for entry in [*manifest["stages"], *manifest["files"].values()]:
        entry["sha256"] = sha256_of(Path(model_dir) / entry["path"])
    write_manifest(model_dir, manifest)


def _write_stage(model_dir: Path, name: str, kind: str, graph: onnx.GraphProto) -> dict:
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(onnx_model)
    relative = f"stages/{name}.onnx"
    onnx.save(onnx_model, str(model_dir / relative))
    return {
        "name": name,
        "kind": kind,
        "path": relative,
        "inputs": [tensor.name for tensor in graph.input],
        "outputs": [tensor.name for tensor in graph.output],
        "sha256": sha256_of(model_dir / relative),
    }


def _batch_input(name: str, size: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size])


def _pair_features(nodes: list, d: int, h: int, has_hidden_input: bool) -> tuple[list, str]:
    """Append the nodes computing x = u * v or concat(u * v, hidden_in), return inputs and x."""
    inputs = [_batch_input("user_emb", d), _batch_input("item_emb", d)]
    nodes.append(helper.make_node("Mul", ["user_emb", "item_emb"], ["product"]))
    if not has_hidden_input:
        return inputs, "product"
    inputs.append(_batch_input("hidden_in", h))
    nodes.append(helper.make_node("Concat", ["product", "hidden_in"], ["features"], axis=1))
    return inputs, "features"


def _decision_graph(
    name: str, theta: np.ndarray, weight: np.ndarray, d: int, h: int, has_hidden_input: bool
) -> onnx.GraphProto:
    nodes: list = []
    inputs, features = _pair_features(nodes, d, h, has_hidden_input)
    nodes += [
        helper.make_node("MatMul", [features, "theta"], ["decision"]),  # (B,)
        helper.make_node("MatMul", [features, "weight_t"], ["pre_hidden"]),  # (B, h)
        helper.make_node("Relu", ["pre_hidden"], ["hidden"]),
    ]
    initializers = [
        numpy_helper.from_array(theta.astype(np.float32), "theta"),
        numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), "weight_t"),
    ]
    outputs = [
        helper.make_tensor_value_info("decision", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", h]),
    ]
    return helper.make_graph(nodes, name, inputs, outputs, initializers)


def _score_graph(model: SyntheticModel, d: int, h: int) -> onnx.GraphProto:
    nodes: list = []
    inputs, features = _pair_features(nodes, d, h, has_hidden_input=True)
    nodes.append(helper.make_node("MatMul", [features, "score_weight"], ["score"]))
    initializers = [numpy_helper.from_array(model.score_weight.astype(np.float32), "score_weight")]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    return helper.make_graph(nodes, "score", inputs, outputs, initializers)
