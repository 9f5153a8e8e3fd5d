"""ZJUKLAB's SemEval-2025 Task 4 system (Xu, Wang, Zhao, Zhong, Jiang, Zhao, Deng, Chen and Zhang, 2025,
"ZJUKLAB at SemEval-2025 Task 4: Unlearning via Model Merging", arXiv:2503.21088): unlearn twice from the
same target with the same objective but different strengths, one run over-forgetting and one
under-forgetting, then merge the two with TIES-Merging (Yadav et al., 2023) into a more balanced model.

Here both runs are NPO with a retain NLL term (the paper's objective also has a KL term on the retain set,
left out so that no reference model is loaded), ``max_steps`` steps each, at ``learning_rate *
over_learning_rate_scale`` and ``learning_rate * under_learning_rate_scale``. The merge, per trainable
tensor: ``theta + merge_scale * TIES(tau_over, tau_under)`` with ``tau = theta_run - theta`` and TIES keeping
each task vector's top ``density`` fraction by magnitude (``obliviate.models.merging``).

Memory: two CPU copies of the trainable parameters (the original weights and the over-forgetting task
vector); the model is never deep-copied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from obliviate.errors import InputError
from obliviate.methods._shared import require_non_negative, require_positive


@dataclass
class ZJUKLABConfig:
    beta: float = 0.05  # NPO's beta in both runs
    forget_weight: float = 1.0
    retain_weight: float = 100.0
    over_learning_rate_scale: float = 2.0  # the over-forgetting run
    under_learning_rate_scale: float = 0.5  # the under-forgetting run
    density: float = 0.8  # TIES: fraction of each task vector's entries kept (by magnitude)
    merge_scale: float = 1.0  # TIES' lambda

    def __post_init__(self):
        require_positive(self, "beta", "forget_weight", "over_learning_rate_scale", "under_learning_rate_scale",
                         "density", "merge_scale")
        require_non_negative(self, "retain_weight")
        if self.density > 1:
            raise InputError(f"must be <= 1, got {self.density!r}", field="density")


class ZJUKLAB:
    name = "ZJUKLAB"
    description = "merge an over- and an under-forgetting NPO run with TIES-Merging (SemEval-2025 Task 4, 2nd)"
    Config = ZJUKLABConfig
    needs_retain = True
    needs_reference = "logprobs"  # each NPO run computes its reference log-probs once
    training_defaults = {"learning_rate": 3e-4, "max_steps": 50}
    training_runs = 2  # train_with calls, each of max_steps steps
    # Options of training/sparsity.py that survive the merge: both runs start from the same (pruned) weights and
    # hold the same pattern, so their task vectors, and TIES' merge of them, are zero where the weights are held.
    weight_selection = ("prune", "l1_weight", "mask")

    def __init__(self, config: ZJUKLABConfig):
        self.config = config

    def run(self, model, tokenizer, forget, retain, settings, reference_loader=None, progress=True) -> dict:
        import torch

        from obliviate.methods.npo import NPO, NPOConfig
        from obliviate.methods.task_vector import trainable_snapshot
        from obliviate.models.merging import ties_merge
        from obliviate.training.unlearn import train_with

        config = self.config
        npo = NPO(NPOConfig(beta=config.beta, forget_weight=config.forget_weight,
                            retain_weight=config.retain_weight))
        original = trainable_snapshot(model)
        params = {name: p for name, p in model.named_parameters() if name in original}

        def train(scale: float) -> dict:
            run_settings = dataclasses.replace(settings, learning_rate=settings.learning_rate * scale)
            return train_with(npo, model, tokenizer, forget, retain, run_settings, progress=progress)

        over = train(config.over_learning_rate_scale)
        with torch.no_grad():
            over_vector = {name: p.detach().to("cpu", copy=True) - original[name] for name, p in params.items()}
            for name, p in params.items():
                p.copy_(original[name].to(p.device, p.dtype))  # back to the target for the second run
        under = train(config.under_learning_rate_scale)
        with torch.no_grad():
            for name, p in params.items():
                theta = original.pop(name).to(p.device, p.dtype)
                merged = ties_merge([over_vector.pop(name).to(p.device, p.dtype), p - theta], config.density)
                p.copy_(theta + config.merge_scale * merged)
        runs = {"over": over, "under": under}
        return {
            "steps": over["steps"] + under["steps"],
            "final_loss": under["final_loss"],
            "log_history": [{**entry, "run": run} for run, record in runs.items() for entry in record["log_history"]],
            "world_size": under["world_size"],
            "runs": {run: {"steps": record["steps"], "final_loss": record["final_loss"]}
                     for run, record in runs.items()},
        }
