"""The models an experiment compares: baselines, teachers, students and HDN ablations.

Each student variant is a choice of training targets and of the rejection rule at test time:

    variant      decision targets      score target   rule at test time
    hdn          teacher thresholds    teacher        sign  (reject where d_n > 0)
    hdn-nd       implicit labels       teacher        quota (fixed share per module)
    hdn-nr       teacher thresholds    teacher        none  (every item reaches scoring)
    hdn-nr-      implicit labels       teacher        none
    hdn-nr-nd    none                  implicit       none

`hdn` and `hdn-nr` share one trained network and differ only at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

TEACHER_KINDS = ("neumf", "convncf", "als")
BASELINES = ("poprank", "mf")
TEACHER_MODEL = "teacher"
STUDENTS = ("mf-student", "two-stage", "hdn", "hdn-nd", "hdn-nr", "hdn-nr-", "hdn-nr-nd")
MODELS = BASELINES + (TEACHER_MODEL,) + STUDENTS


@dataclass(frozen=True)
class HDNVariant:
    """Training targets and test-time rejection rule of one HDN variant."""

    decision_targets: str
    score_target: str
    rule: str

    @property
    def training_key(self) -> str:
        """Name shared by variants that train the same network."""
        return f"{self.decision_targets}-{self.score_target}"


HDN_VARIANTS = {
    "hdn": HDNVariant("teacher", "teacher", "sign"),
    "hdn-nd": HDNVariant("implicit", "teacher", "quota"),
    "hdn-nr": HDNVariant("teacher", "teacher", "none"),
    "hdn-nr-": HDNVariant("implicit", "teacher", "none"),
    "hdn-nr-nd": HDNVariant("none", "implicit", "none"),
}


def check_model_name(name: str) -> str:
    """Return `name` if it is a known model, else raise a ValueError listing the valid names."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid models: {', '.join(MODELS)}.")
    return name


def check_teacher_kind(name: str) -> str:
    """Return `name` if it is a known teacher, else raise a ValueError listing the valid ones."""
    if name not in TEACHER_KINDS:
        raise ValueError(f"Unknown teacher {name!r}. Valid teachers: {', '.join(TEACHER_KINDS)}.")
    return name
