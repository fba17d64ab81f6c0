"""Shared fixtures and hypothesis profiles."""

from __future__ import annotations

import os

# No model hub is reachable here: fail fast instead of retrying downloads (subprocesses inherit).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from posctx.model import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    """Saved tiny random models with real tokenizers, keyed by kind."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "bert": tiny.save_tiny_bert(root / "bert", minilm_dir),
        "gpt2": tiny.save_tiny_gpt2(root / "gpt2"),
        "llama": tiny.save_tiny_llama(root / "llama"),
    }
