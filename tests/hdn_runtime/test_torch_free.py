"""The runtime imports, loads and recommends in a process where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH_AND_RECOMMEND = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name!r})")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import hdn_runtime

    with hdn_runtime.Recommender.load(sys.argv[1]) as recommender:
        results = recommender.recommend(["1000", "ghost"], k=3, unknown_users="popular")
    assert len(results) == 2, results
    assert results[1].fallback, results
    assert "torch" not in sys.modules, "torch was imported"
    print("ok", results[0].item_ids)
    """
)


def test_recommend_without_torch(synthetic_model):
    model_dir, _ = synthetic_model

    completed = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH_AND_RECOMMEND, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok")
