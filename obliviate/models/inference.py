"""What running a model under ``torch.inference_mode`` leaves behind, made ordinary again."""

from __future__ import annotations


def normal_buffers(model) -> None:
    """Replace any buffer that a forward pass under ``torch.inference_mode`` created (transformers' dynamic RoPE
    registers a new ``inv_freq`` past its cached length) with an ordinary copy, so that training the same model
    later can use it (autograd cannot save inference tensors)."""
    import torch

    with torch.inference_mode(False):
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
