"""Shipped configuration files: ``accelerate/`` holds launch configs for DDP, FSDP and DeepSpeed ZeRO-3."""
