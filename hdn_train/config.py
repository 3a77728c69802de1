"""Settings of one training run, saved as `config.json` in the run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hdn_train.variants import check_teacher_kind

EXTRA_MODELS = ("mf-student", "two-stage", "hdn-nd", "hdn-nr-", "hdn-nr-nd")


@dataclass
class TrainConfig:
    """Everything `hdn train` needs; defaults are the HDN paper's settings except epochs.

    Attributes:
        data: A named data set (`ml-100k`, `ml-1m`) or a path to interaction data.
        split: `paper` re-splits all interactions (test_share per user, seeded);
            `preset` uses the train/test files of an adjacency-list folder as given.
        seed: Seed for the split, initialisation and sampling.
        test_share: Share of each user's items held out by the paper split.
        dim: Embedding width of every model.
        hidden_dim: Width of the HDN interaction embeddings.
        mlp_layers: NeuMF's MLP widths; the first is twice the MLP embedding width.
        gammas: Rejection ratio of each HDN decision module (the share of the catalogue
            rejected once that module has decided).
        negatives: Sampled negatives per training positive.
        learning_rate: Adam learning rate for every model.
        batch_size: Sampled pairs per optimiser step.
        teacher: Teacher kind: neumf, convncf or als.
        extra_models: Further models to train and evaluate beside the HDN: mf-student,
            two-stage, hdn-nd, hdn-nr-, hdn-nr-nd.
        mf_epochs: Epochs of the MF baseline.
        pretrain_epochs: Epochs of GMF and of MLP pre-training each; 0 trains NeuMF from
            scratch.
        teacher_epochs: Epochs of NeuMF after pre-training, or of ConvNCF's BPR training.
        convncf_pretrain_epochs: Epochs of MF-BPR that initialise ConvNCF's embeddings.
        student_epochs: Epochs of HDN distillation.
        ks: Cut-offs K of the reported metrics.
        threads: Torch intra-op threads; 0 keeps torch's default.
        user_col: Header name of the user column when `data` is a CSV or TSV file.
        item_col: Header name of the item column when `data` is a CSV or TSV file.
    """

    data: str = "ml-100k"
    split: str = "paper"
    seed: int = 0
    test_share: float = 0.2
    dim: int = 32
    hidden_dim: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16, 8)
    gammas: tuple[float, ...] = (0.5, 0.75, 0.875)
    negatives: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 512
    teacher: str = "neumf"
    extra_models: tuple[str, ...] = ()
    mf_epochs: int = 10
    pretrain_epochs: int = 5
    teacher_epochs: int = 5
    convncf_pretrain_epochs: int = 10
    student_epochs: int = 10
    ks: tuple[int, ...] = (10, 20)
    threads: int = 0
    user_col: str = "user_id"
    item_col: str = "item_id"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in ("paper", "preset"):
            raise ValueError(f"split must be 'paper' or 'preset', got {self.split!r}.")
        if not 0.0 < self.test_share < 1.0:
            raise ValueError(f"test_share must be in (0, 1), got {self.test_share}.")
        for name in ("dim", "hidden_dim", "negatives", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("mf_epochs", "pretrain_epochs", "teacher_epochs", "student_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        # ConvNCF's pre-training trains only its embeddings, so its network needs its own epochs.
        teacher_untrained = (
            self.teacher == "neumf" and self.teacher_epochs + self.pretrain_epochs == 0
        ) or (self.teacher == "convncf" and self.teacher_epochs == 0)
        if teacher_untrained or self.student_epochs == 0:
            raise ValueError(
                "The teacher and the student each need at least one epoch; got "
                f"pretrain_epochs={self.pretrain_epochs}, teacher_epochs={self.teacher_epochs}, "
                f"student_epochs={self.student_epochs}."
            )
        if not self.gammas:
            raise ValueError("gammas must name at least one rejection ratio.")
        self.mlp_layers = tuple(int(width) for width in self.mlp_layers)
        self.gammas = tuple(float(gamma) for gamma in self.gammas)
        self.ks = tuple(int(k) for k in self.ks)
        self.extra_models = tuple(self.extra_models)
        check_teacher_kind(self.teacher)
        for model in self.extra_models:
            if model not in EXTRA_MODELS:
                raise ValueError(
                    f"Unknown extra model {model!r}. Valid extra models: {', '.join(EXTRA_MODELS)}."
                )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        payload = asdict(self)
        for name in ("mlp_layers", "gammas", "ks", "extra_models"):
            payload[name] = list(payload[name])
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainConfig:
        """Build a config from `to_dict` output; unknown keys raise a ValueError naming them."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(
                f"Unknown training settings {unknown}; valid ones are {sorted(known)}."
            )
        return cls(**payload)
