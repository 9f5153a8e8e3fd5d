"""ULD, unlearning from logit difference (Ji, Liu, Zhang, Liu, Kompella, Liu and Chang, 2024, "Reversing the
Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference", NeurIPS 2024).

A procedure that leaves the target untouched and returns a wrapper model (``obliviate.models.wrappers``):

1. *Assistant*: a fresh model made of the target's first ``assistant_layers`` decoder layers with its embeddings,
   final norm and output head, trained through LoRA adapters (peft; the paper's r=16, alpha=32, dropout 0.05 on
   every attention and MLP projection) that are merged into it afterwards.
2. *Reversed objectives*: the assistant learns what the target must forget and forgets what it must keep::

       L(phi) = NLL_forget(phi) + retain_weight * mean_t KL(U || p_phi(. | x_<t))

   over the labelled positions of forget and retain rows, U the uniform distribution over the vocabulary (the
   paper's retain objective, computed by its code as ``kl_div(log p, uniform)``). KL(U || p) equals the
   cross-entropy to U minus the constant log V, so both give the same gradients; the KL is what is logged (0 when
   the assistant is uniform).
3. *Logit difference* at inference (``model.py``): ``l = l_target + assistant_weight * l_assistant`` with
   ``assistant_weight < 0``, the assistant's logits zeroed outside the target's relative-top set.

Before training, the assistant's logits are exactly the target's logits read out after layer K (the target's
final norm and head applied to its K-th hidden state). The result is saved as a wrapper directory holding the
target (unchanged), the assistant and the two inference options; ``load_model`` reads it back as one causal LM.

Not shipped: the paper augments the forget and retain sets with paraphrased and perturbed answers
(its ``forget_more_retain_perturb`` data mode); here the assistant trains on the given forget and retain sets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from obliviate.errors import InputError
from obliviate.losses import mean_nll, uniform_kl
from obliviate.methods._shared import logits_and_labels, require_non_negative


def default_assistant_layers(target_layers: int) -> int:
    """A quarter of the target's layers, rounded, at least one: the paper's 8 of Llama-2-7B's 32."""
    return max(1, (target_layers + 2) // 4)


@dataclass
class ULDConfig:
    # Decoder layers of the assistant (the target's first ones); None: a quarter of the target's. Paper: 8 of 32.
    assistant_layers: int | None = None
    # Weight of the uniform-KL retain objective; 5.0 in the reference code's remember+uniform configuration.
    retain_weight: float = 5.0
    # w in l_target + w * l_assistant; -0.8 in the reference code's TOFU evaluation scripts.
    assistant_weight: float = -0.8
    # The relative-top filter; 1e-2 in the reference code's TOFU evaluation scripts.
    relative_top: float = 0.01

    def __post_init__(self):
        if self.assistant_layers is not None and self.assistant_layers < 1:
            raise InputError(f"must be >= 1, got {self.assistant_layers!r}", field="assistant_layers")
        require_non_negative(self, "retain_weight")
        from obliviate.methods.uld.model import check_combination

        check_combination(self.assistant_weight, self.relative_top)


class ReversedObjectives:
    """The assistant's loss for ``train_with``: NLL descent on forget, KL to the uniform distribution on retain."""

    needs_retain = True
    needs_reference = None

    def __init__(self, retain_weight: float):
        self.retain_weight = retain_weight

    def loss(self, model, batch, reference_model=None):
        forget_nll = mean_nll(*logits_and_labels(model, batch, "forget"))
        retain_kl = uniform_kl(*logits_and_labels(model, batch, "retain"))
        loss = forget_nll + self.retain_weight * retain_kl
        return loss, {"forget_nll": forget_nll.item(), "retain_uniform_kl": retain_kl.item()}


def build_assistant(target, layers: int | None = None):
    """A new model: the target's first ``layers`` decoder layers, embeddings, final norm and head (copies)."""
    from transformers import AutoModelForCausalLM

    from obliviate.training.scope import layer_index, num_layers

    total = num_layers(target)
    count = default_assistant_layers(total) if layers is None else layers
    if not 1 <= count <= total:
        raise InputError(f"the target has {total} decoder layers; choose 1..{total}", field="assistant_layers")
    config = copy.deepcopy(target.config)
    if not hasattr(config, "num_hidden_layers"):
        raise InputError(f"ULD cannot cut a {type(config).__name__} model to its first layers", field="model")
    config.num_hidden_layers = count
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention types (sliding, full)
        config.layer_types = config.layer_types[:count]
    assistant = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    kept = {name: tensor for name, tensor in target.state_dict().items()
            if layer_index(name) is None or layer_index(name) < count}
    missing, unexpected = assistant.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise InputError(f"ULD cannot build an assistant for {type(target).__name__}: weights "
                         f"{(missing or unexpected)[:3]} do not match", field="model")
    assistant.generation_config = copy.deepcopy(target.generation_config)
    return assistant.to(target.device).eval()


class ULD:
    name = "ULD"
    description = ("an assistant (the target's first layers + LoRA) learns forget, unlearns retain; "
                   "serves l_target + w * l_assistant, w < 0")
    Config = ULDConfig
    needs_retain = True
    needs_reference = None
    # The reference code's assistant training: LoRA r=16, alpha=32, dropout 0.05 on every linear layer but the
    # head, learning rate 1e-3. Steps: not tuned here (the paper trains for epochs of TOFU).
    training_defaults = {"learning_rate": 1e-3, "max_steps": 100, "lora": True, "lora_rank": 16,
                         "lora_alpha": 32.0, "lora_dropout": 0.05}
    wrapper_result = True  # its result is a wrapper model (obliviate.models.wrappers), not new weights
    training_runs = 1  # train_with calls, each of max_steps steps

    def __init__(self, config: ULDConfig):
        self.config = config

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True):
        """(the wrapper model, the record): a new model object, the target inside it unchanged."""
        from obliviate.methods.uld.model import ULDModel
        from obliviate.training.scope import num_layers
        from obliviate.training.unlearn import train_with

        if isinstance(model, ULDModel):
            # A later unlearning request (MUSE's sustainability curve): the same target, its assistant trained on.
            target, assistant = model.target, model.assistant
        else:
            target, assistant = model, build_assistant(model, self.config.assistant_layers)
        record = train_with(ReversedObjectives(self.config.retain_weight), assistant, tokenizer, forget, retain,
                            settings, progress=progress)
        assistant.to(target.device)
        wrapper = ULDModel(target, assistant, assistant_weight=self.config.assistant_weight,
                           relative_top=self.config.relative_top).eval()
        return wrapper, {**record, "uld": {
            "assistant_layers": num_layers(assistant), "target_layers": num_layers(target),
            "assistant_parameters": sum(p.numel() for p in assistant.parameters()),
            "assistant_weight": self.config.assistant_weight, "relative_top": self.config.relative_top}}
