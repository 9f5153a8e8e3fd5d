"""Models: loading any local Hugging Face causal LM, training tokenizers, building the micro target and oracle."""

from obliviate.models.loading import LoadedModel, load_model, save_model

__all__ = ["LoadedModel", "load_model", "save_model"]
