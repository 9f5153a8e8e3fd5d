"""LoRA negation (Zhang, Chen, Liu and He, 2023, "Composing Parameter-Efficient Modules with Arithmetic
Operations", NeurIPS 2023, Section 3: the negation operator, applied to unlearning in Section 4).

A procedure: train a LoRA adapter ``delta_W = (alpha / r) * B A`` on the forget set (plain NLL descent, so the
adapter *learns* the forget set), negate it and merge it into the base weights. The paper negates a LoRA
module by negating one of its two factors (negating both would cancel out): here ``B -> -negation_scale * B``,
so the merged update is ``-negation_scale * delta_W`` (the paper's lambda-weighted negation). The result is a
plain model: the adapter is merged and the peft wrappers are removed, in place.

The adapter's rank, alpha and dropout are the training settings' ``lora_rank``, ``lora_alpha`` and
``lora_dropout``. It goes on every trainable ``nn.Linear`` (an output head tied to the input embeddings is
skipped, so a merge never writes into the embeddings twice; ``lora_targets`` does not narrow it, while
``train_params``/``train_layers`` still pick which adapters train); frozen layers, embeddings and norms are
left untouched. peft is imported only when the method runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.errors import InputError
from obliviate.methods._shared import require_positive
from obliviate.methods.task_vector import FineTuneOnForget


@dataclass
class LoRANegationConfig:
    negation_scale: float = 1.0  # the paper's lambda: the merged update is -lambda * delta_W

    def __post_init__(self):
        require_positive(self, "negation_scale")


# The adapter's shape comes from the training settings' lora_rank, lora_alpha and lora_dropout (the options
# every method's LoRA training uses), with these values where a TrainingConfig has no such fields.
ADAPTER_DEFAULTS = {"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0}


def adapted_linear_names(model) -> list[str]:
    """Names of the trainable ``nn.Linear`` modules, skipping an output head tied to the input embeddings."""
    import torch

    tied = None
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        output, inputs = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        tied = output if output is inputs else None
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.weight.requires_grad and module.weight is not tied]


class LoRANegation:
    name = "LoRANegation"
    description = "train a LoRA adapter on forget, negate it (B -> -scale * B) and merge it into the weights"
    Config = LoRANegationConfig
    needs_retain = False
    needs_reference = None
    training_defaults = {"learning_rate": 1e-3, "max_steps": 20}
    training_runs = 1  # train_with calls, each of max_steps steps
    adapted_module_types = ("Linear",)  # only these modules' weights change

    def __init__(self, config: LoRANegationConfig):
        self.config = config

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True) -> dict:
        import torch
        from peft.tuners.lora import LoraLayer

        from obliviate.training.scope import attach_lora
        from obliviate.training.unlearn import train_with

        if getattr(settings, "lora", False):
            raise InputError("LoRANegation trains its own adapter: leave lora=false (lora_rank, lora_alpha and "
                             "lora_dropout still shape it)", field="lora")
        targets = adapted_linear_names(model)
        if not targets:
            raise InputError("LoRANegation found no trainable linear layer to adapt", field="model")
        shape = {key: getattr(settings, key, default) for key, default in ADAPTER_DEFAULTS.items()}
        trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
        # Injects the LoRA layers into `model` itself.
        peft_model = attach_lora(model, targets, shape["lora_rank"], shape["lora_alpha"], shape["lora_dropout"])
        record = train_with(FineTuneOnForget(), peft_model, tokenizer, forget, retain, settings, progress=progress)
        scale = self.config.negation_scale
        with torch.no_grad():
            for module in peft_model.modules():
                if isinstance(module, LoraLayer):
                    for factor in module.lora_B.values():
                        factor.weight.mul_(-scale)
        merged = peft_model.merge_and_unload()  # puts the plain layers back into `model`, merged
        for name, parameter in merged.named_parameters():
            parameter.requires_grad_(trainable[name])  # peft froze the base weights; give the flags back
        return {**record, "lora_negation": {**shape, "negation_scale": scale, "adapted_modules": len(targets)}}
