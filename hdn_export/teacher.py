"""Export a run's deep teacher (NeuMF or ConvNCF) to one ONNX model that scores index pairs.

The benchmark runs the teacher through the same ONNX Runtime settings as the HDN stages, so
that the two are compared on one runtime. Unlike the HDN stages, the teacher's graph contains
its embedding tables and takes int64 indices:

    (users int64 (P,), items int64 (P,)) -> scores float32 (P,)

The file's metadata records the teacher kind, the table sizes and the multiply-adds per pair.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from hdn_export.stages import row_products
from hdn_runtime.errors import ExportError
from hdn_train.models.convncf import ConvNCF
from hdn_train.models.neumf import NeuMF
from hdn_train.pipeline import load_run
from hdn_train.teachers import TorchTeacher

logger = logging.getLogger(__name__)

USERS_INPUT = "users"
ITEMS_INPUT = "items"
SCORES_OUTPUT = "scores"
# Keys of the ONNX metadata that `export_teacher_model_onnx` writes.
KIND_KEY = "hdn.teacher_kind"
MULTIPLY_ADDS_KEY = "hdn.multiply_adds_per_pair"
NUM_USERS_KEY = "hdn.num_users"
NUM_ITEMS_KEY = "hdn.num_items"
RANDOM_WEIGHTS_KEY = "hdn.random_weights"
_EXAMPLE_PAIRS = 64


@dataclass(frozen=True)
class TeacherExport:
    """Description of one exported teacher file.

    Attributes:
        path: The ONNX file.
        kind: "neumf" or "convncf".
        multiply_adds_per_pair: Multiply-adds to score one (user, item) pair, from the layer
            shapes. Bias additions and activations are not counted.
        num_users: Rows of the user tables.
        num_items: Rows of the item tables.
    """

    path: Path
    kind: str
    multiply_adds_per_pair: int
    num_users: int
    num_items: int


def neumf_multiply_adds_per_pair(model: NeuMF) -> int:
    """Return the multiply-adds of one NeuMF pair: GMF product, MLP tower and output layer.

    At dim 32 and MLP widths (64, 32, 16, 8) this is 32 + 2,688 + 40 = 2,760.
    """
    linear_layers = [layer for layer in model.mlp.tower if isinstance(layer, nn.Linear)]
    total = model.gmf.user_embedding.embedding_dim  # the element-wise GMF product
    total += sum(layer.in_features * layer.out_features for layer in linear_layers)
    return total + model.output.in_features * model.output.out_features


def teacher_multiply_adds_per_pair(model: nn.Module) -> int:
    """Return the multiply-adds per pair of a NeuMF or ConvNCF teacher.

    Raises:
        ValueError: The model is neither.
    """
    if isinstance(model, ConvNCF):
        return model.multiply_adds_per_pair()
    if isinstance(model, NeuMF):
        return neumf_multiply_adds_per_pair(model)
    raise ValueError(
        f"Cannot count the multiply-adds of a {type(model).__name__}. Only NeuMF and ConvNCF "
        "teachers are exported."
    )


class ServingNeuMF(nn.Module):
    """NeuMF's forward pass with its one-output layer written as a row times a matrix.

    The HDN stages compute their decisions and scores that way (`row_products`), so the timed
    teacher gets the same help from ONNX Runtime's matrix product. The scores are NeuMF's.
    """

    def __init__(self, model: NeuMF) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        joined = self.model.interaction(users, items)
        return row_products(self.model.output.weight, joined) + self.model.output.bias


def export_teacher_model_onnx(
    model: nn.Module, kind: str, path: str | Path, random_weights: bool = False
) -> TeacherExport:
    """Export a NeuMF or ConvNCF network that maps (users, items) to scores, batch axis dynamic.

    Args:
        model: The trained network, with `forward(users, items)`.
        kind: "neumf" or "convncf", recorded in the file's metadata.
        path: ONNX file to write. Its folder must exist.
        random_weights: Record in the metadata that the weights are untrained, so that
            reports label the teacher's figures.

    Raises:
        ValueError: The model is neither NeuMF nor ConvNCF.
        ExportError: torch.onnx.export produced no program.
    """
    path = Path(path)
    multiply_adds = teacher_multiply_adds_per_pair(model)
    num_users = model_table_rows(model, "user")
    num_items = model_table_rows(model, "item")
    model = model.eval()
    serving = ServingNeuMF(model) if isinstance(model, NeuMF) else model
    example = (
        torch.randint(0, num_users, (_EXAMPLE_PAIRS,)),
        torch.randint(0, num_items, (_EXAMPLE_PAIRS,)),
    )
    batch = torch.export.Dim("batch", min=0)
    # The exporter prints progress and version warnings; callers report the outcome instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            serving,
            example,
            input_names=[USERS_INPUT, ITEMS_INPUT],
            output_names=[SCORES_OUTPUT],
            dynamic_shapes={"users": {0: batch}, "items": {0: batch}},
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for the {kind} teacher.")
    program.save(str(path))

    # The benchmark reads these keys. Loading without external data and saving to the same
    # path leaves any external-data references as they are.
    proto = onnx.load(str(path), load_external_data=False)
    metadata = {
        KIND_KEY: kind,
        MULTIPLY_ADDS_KEY: str(multiply_adds),
        NUM_USERS_KEY: str(num_users),
        NUM_ITEMS_KEY: str(num_items),
        RANDOM_WEIGHTS_KEY: "1" if random_weights else "0",
    }
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    logger.info("Exported the %s teacher to %s", kind, path)
    return TeacherExport(path, kind, multiply_adds, num_users, num_items)


def export_teacher_onnx(run_dir: str | Path, path: str | Path) -> TeacherExport:
    """Export the teacher of a training run to one ONNX file.

    Args:
        run_dir: A run directory written by `hdn train`.
        path: ONNX file to write. Its folder must exist.

    Raises:
        ValueError: The run's teacher is not a NeuMF or ConvNCF network (an ALS teacher has no
            layers to export), or the run directory is invalid.
        FileNotFoundError: `run_dir` does not exist.
    """
    run = load_run(run_dir)
    if not isinstance(run.teacher, TorchTeacher):
        raise ValueError(
            f"The run {run_dir} has a {run.config.teacher!r} teacher, which is not a network. "
            "Only NeuMF and ConvNCF teachers can be exported."
        )
    return export_teacher_model_onnx(run.teacher.model, run.config.teacher, path)


def model_table_rows(model: nn.Module, side: str) -> int:
    """Return the rows of a NeuMF or ConvNCF model's user or item table ("user" or "item")."""
    owner = model.gmf if isinstance(model, NeuMF) else model
    return getattr(owner, f"{side}_embedding").num_embeddings
