"""Representation Misdirection for Unlearning, RMU (Li et al., 2024, "The WMDP Benchmark: Measuring and Reducing
Malicious Use With Unlearning", section 5).

At decoder layer ``layer`` the hidden states of forget tokens are pushed toward ``steering_coefficient * u``, u a
fixed random unit vector (uniform in [0, 1) per component, normalised, seeded by ``seed``), which scrambles what
later layers read from them; the hidden states of retain tokens are held to the original model's:

loss = forget_weight * MSE(h_layer(forget), c * u) + retain_weight * MSE(h_layer(retain), h_layer^original(retain))

MSE is over real (non-padding) tokens, the mean over the hidden dimension per token (``losses.masked_mse``).
``h_layer`` is the output of decoder layer ``layer`` (``hidden_states[layer + 1]``).

Which weights train: as in the paper, only the MLP down-projections of layers ``layer - 2 .. layer``
(``train_params`` in ``training_defaults``; the layers follow ``layer`` through ``default_train_layers``).
``train_layers=...``/``train_params=...`` override them. ``layer`` defaults to 7/32 of the depth (the paper's
layer 7 of Zephyr-7B's 32), at least 2 so that three layers train, and at most the last layer.

The frozen retain activations come from the reference mechanism: with ``lora=true`` the same model with its
adapters disabled; otherwise a frozen copy loaded fresh (``needs_reference = "model"``). Precomputing retain
activations once was rejected: they are (retain tokens x hidden size) floats, about 3 GB for LUME's retain
set on a 4096-wide model, against one extra forward pass per step.

The paper's constants (c = 6.5, retain_weight = 1200 for Zephyr-7B, lr 5e-5) are tied to that model's activation
scale. NOT TUNED YET on the micro benchmark, whose target has residual-stream norms of about 400 per token at
layer 2: four runs (c = 100 and 400, lr 1e-3 and 1e-2, 30-60 steps, down-projections or whole MLPs of layers 0-2)
left the forget MSE near its start and the model unlearned nothing (final score 0.31-0.33, as the target); with
retain_weight 1 utility collapsed (0.194). The defaults are the measured run that did no harm (final 0.330).
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.losses import masked_mse
from obliviate.methods._shared import require_non_negative, require_positive


def default_layer(num_layers: int) -> int:
    return min(num_layers - 1, max(2, num_layers * 7 // 32))


@dataclass
class RMUConfig:
    layer: int | None = None  # decoder layer whose output is steered; None: 7/32 of the depth (see above)
    steering_coefficient: float = 100.0
    forget_weight: float = 1.0
    retain_weight: float = 100.0
    seed: int = 0  # of the random direction u

    def __post_init__(self):
        require_positive(self, "steering_coefficient", "forget_weight")
        require_non_negative(self, "retain_weight")
        if self.layer is not None:
            require_non_negative(self, "layer")


class RMU:
    name = "RMU"
    description = "steer forget activations at one layer to a random direction, hold retain activations (WMDP)"
    Config = RMUConfig
    needs_retain = True
    needs_reference = "model"
    training_defaults = {"learning_rate": 1e-2, "max_steps": 30, "train_params": r"\.mlp\.down_proj\."}

    def __init__(self, config: RMUConfig):
        self.config = config
        self._layer = None  # resolved against the model's depth (default_train_layers, or the first loss)
        self._control = None

    def default_train_layers(self, num_layers: int) -> list[int]:
        """The paper's choice: the steered layer and the two before it (their MLP down-projections)."""
        layer = self._resolve_layer(num_layers)
        return list(range(max(0, layer - 2), layer + 1))

    def _resolve_layer(self, num_layers: int) -> int:
        from obliviate.errors import InputError

        self._layer = self.config.layer if self.config.layer is not None else default_layer(num_layers)
        if self._layer >= num_layers:
            raise InputError(f"layer {self._layer} does not exist: the model has {num_layers} decoder layers",
                             field="layer")
        return self._layer

    def _hidden(self, model, batch, side):
        outputs = model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"],
                        output_hidden_states=True)
        return outputs.hidden_states[self._layer + 1]

    def _control_vector(self, hidden):
        import torch

        if self._control is None:
            generator = torch.Generator().manual_seed(self.config.seed)
            direction = torch.rand(hidden.shape[-1], generator=generator)
            self._control = self.config.steering_coefficient * direction / direction.norm()
        return self._control.to(hidden.device)

    def loss(self, model, batch, reference_model=None):
        import torch

        if self._layer is None:  # train_layers was given, or no train_with: resolve against this model
            from obliviate.training.scope import num_layers

            self._resolve_layer(num_layers(getattr(model, "module", model)))
        forget_hidden = self._hidden(model, batch, "forget")
        forget_loss = masked_mse(forget_hidden, self._control_vector(forget_hidden), batch["forget_attention_mask"])
        with torch.no_grad():
            reference_hidden = self._hidden(reference_model, batch, "retain")
        retain_loss = masked_mse(self._hidden(model, batch, "retain"), reference_hidden,
                                 batch["retain_attention_mask"])
        loss = self.config.forget_weight * forget_loss + self.config.retain_weight * retain_loss
        return loss, {"forget_mse": forget_loss.item(), "retain_mse": retain_loss.item()}
