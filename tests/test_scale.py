"""Options for larger models and several processes: the memory estimate, bf16 and activation checkpointing,
methods refusing a sharding engine, the shipped accelerate configs."""

import json

import pytest
import yaml

from obliviate.cli import main
from obliviate.training.memory import estimate_line, training_estimate
from obliviate.training.unlearn import plan


def test_memory_estimate_counts_weights_gradients_optimizer_and_a_second_model(tiny_model):
    total = sum(p.numel() for p in tiny_model.parameters())
    graddiff = plan("GradDiff")
    estimate = training_estimate(tiny_model, graddiff.training, type("M", (), {"needs_reference": None}))
    parts = estimate["parts_per_process"]
    assert parts["weights"] == total * 4 and parts["gradients"] == total * 4 and parts["optimizer"] == total * 8
    assert parts["second_model"] == 0
    kl = training_estimate(tiny_model, graddiff.training, type("M", (), {"needs_reference": "model"}))
    assert kl["parts_per_process"]["second_model"] == total * 4
    sharded = training_estimate(tiny_model, graddiff.training, type("M", (), {"needs_reference": None}),
                                world_size=2, engine="FSDP")
    assert sharded["bytes_per_process"] == pytest.approx(estimate["bytes_per_process"] / 2)
    assert sharded["whole_model_bytes"] == total * 4 and estimate["whole_model_bytes"] is None
    assert "each process first loads the whole model" in estimate_line(sharded)
    assert "whole model" not in estimate_line(estimate)
    lora = plan("GradDiff", {"lora": True, "lora_rank": 2})
    adapters = training_estimate(tiny_model, lora.training, type("M", (), {"needs_reference": None}))
    assert 0 < adapters["trainable_parameters"] < total / 4
    assert adapters["parts_per_process"]["weights"] == total * 4  # the frozen base is still held


def test_unlearn_prints_the_estimate_and_trains_with_bf16_and_checkpointing(tmp_path, tiny_model_dir, tiny_lume_dir,
                                                                            capsys):
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--no-gate", "--out", str(out), "--method",
                 "GradDiff", "max_steps=2", "batch_size=2", "bf16=true", "gradient_checkpointing=true"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "memory: needs about" in err and "per process" in err
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["training"]["bf16"] is True and run["options"]["training"]["gradient_checkpointing"]
    assert run["steps"] == 2 and run["memory_estimate"]["bytes_per_process"] > 0
    assert "deprecated" not in err  # the current transformers names (activation_checkpointing), not the old ones


@pytest.mark.parametrize("variable, engine", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_procedure_refuses_a_sharding_engine_before_training(tmp_path, tiny_model_dir, tiny_lume_dir, monkeypatch,
                                                               capsys, variable, engine):
    monkeypatch.setenv(variable, "true")
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"),
                 "--retain", str(tiny_lume_dir / "retain.jsonl"), "--out", str(out), "--method", "NGDiff"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and engine in err[0] and "NGDiff" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("environment, refused", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, True),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, True),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, False),
])
def test_lora_is_refused_where_its_merge_into_sharded_weights_is_unverified(tmp_path, tiny_model_dir, tiny_lume_dir,
                                                                          monkeypatch, capsys, environment, refused):
    from obliviate.training import unlearn as unlearn_module

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # Past the check the run would need the engine's processes: stop it where training would begin.
    monkeypatch.setattr(unlearn_module, "unlearn", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("trains")))
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(tiny_lume_dir / "forget.jsonl"), "--retain",
            str(tiny_lume_dir / "retain.jsonl"), "--out", str(out), "--no-gate", "--checkpoint-every", "0", "--method", "KL",
            "lora=true"]
    if refused:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lora" in err[0] and "FSDP2" in err[0]
    else:
        with pytest.raises(RuntimeError, match="trains"):
            main(args)
    assert not out.exists()


def test_shipped_accelerate_configs_name_their_engine():
    from importlib import resources

    folder = resources.files("obliviate.configs") / "accelerate"
    kinds = {name: yaml.safe_load((folder / f"{name}.yaml").read_text())["distributed_type"]
             for name in ("ddp", "fsdp", "deepspeed-zero3")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero3": "DEEPSPEED"}
    zero = yaml.safe_load((folder / "deepspeed-zero3.yaml").read_text())
    assert zero["deepspeed_config"]["zero_stage"] == 3
    fsdp = yaml.safe_load((folder / "fsdp.yaml").read_text())["fsdp_config"]
    # FSDP2, and every process loading the whole model (the reference log-probs and the gate's first measure
    # run before sharding; tests/test_distributed.py runs this file on 2 CPU processes).
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_cpu_ram_efficient_loading"] is False
