"""The one trainer: ``transformers.Trainer`` asking the method for the loss.

Riding on ``Trainer`` (and so on accelerate) gives DDP, FSDP and DeepSpeed through ``accelerate launch``
without any distributed code here.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer


class UnlearningTrainer(Trainer):
    def __init__(self, *args, method, reference_model=None, base_model=None, l1_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        self.l1_weight = l1_weight  # l1-sparse unlearning (training/sparsity.py): gamma_t * ||theta||_1 is added
        self.reference_model = reference_model
        self.base_model = self._prepare_frozen(base_model) if base_model is not None else None
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_count = 0
        # A module is a frozen copy to prepare; anything else (LoRA's adapters-disabled view of the model being
        # trained, scope.AdapterDisabledReference) lives where the model lives and must not be frozen.
        if isinstance(reference_model, torch.nn.Module):
            self.reference_model = self._prepare_frozen(reference_model)

    def _prepare_frozen(self, module):
        from obliviate.models.inference import keep_outputs

        module.eval()
        module.requires_grad_(False)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            # Shard a frozen model the same way as the model being trained (its passes gather weights from every
            # process at once, so none may read a row back while another runs it: nothing is kept).
            return self.accelerator.prepare_model(module, evaluation_mode=True)
        module = module.to(self.args.device)
        keep_outputs(module)  # its logits on a row are computed once for the run (inference.KeptOutputs)
        return module

    def train(self, *args, **kwargs):
        from obliviate.models.inference import drop_kept_outputs

        try:
            return super().train(*args, **kwargs)
        finally:
            for module in (self.base_model, self.reference_model):
                if module is not None:
                    drop_kept_outputs(module)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if hasattr(self.reference_model, "engine_model"):  # LoRA's adapters-disabled view: through the wrapper
            self.reference_model.engine_model = model
        extra = {"base_model": self.base_model} if self.base_model is not None else {}
        loss, metrics = self.method.loss(model, inputs, self.reference_model, **extra)
        if self.l1_weight:
            from obliviate.training.sparsity import l1_coefficient, l1_norm

            coefficient = l1_coefficient(self.l1_weight, self.state.global_step, self.state.max_steps)
            norm = l1_norm(p for p in model.parameters() if p.requires_grad)
            loss = loss + coefficient * norm
            metrics = {**metrics, "l1_coefficient": coefficient, "l1_norm": norm.item()}
        for name, value in metrics.items():
            self._metric_sums[name] += value
        self._metric_count += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        # Add the method's own terms (e.g. forget NLL, retain NLL), averaged since the last log.
        if self._metric_count:
            logs.update({name: total / self._metric_count for name, total in self._metric_sums.items()})
            self._metric_sums.clear()
            self._metric_count = 0
        super().log(logs, *args, **kwargs)
