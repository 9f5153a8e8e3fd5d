"""Training: the one ``transformers.Trainer`` subclass, its data, and the ``unlearn`` entry point."""
