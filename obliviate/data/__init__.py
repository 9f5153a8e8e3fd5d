"""Records and loaders: LUME probes and documents, MIA document sets, MMLU, the bundled micro benchmark."""

from obliviate.data.records import Document, Probe, ProbeKind

__all__ = ["Document", "Probe", "ProbeKind"]
