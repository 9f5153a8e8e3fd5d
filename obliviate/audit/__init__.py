"""Audits: the LUME scorer, generation, likelihoods, utility, and the evaluation that ties them together."""
