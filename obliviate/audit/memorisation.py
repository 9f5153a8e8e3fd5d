"""Memorisation of forget text, from one teacher-forced pass per document (``mia.token_statistics``' argmax
hits, shared with the other suites).

* Exact memorisation (Tirumala et al., 2022): the fraction of a document's continuation tokens that are the
  model's argmax given the true prefix. 1.0 = verbatim memory.
* Extraction strength (Carlini et al., 2021, as used by Ye et al., 2024): ``1 - k / n`` where k is the shortest
  prefix from which greedy decoding reproduces the rest of the n-token document. Greedy decoding from prefix k
  reproduces the rest exactly when every later token is the argmax given its true prefix, so k is one past the
  last position where the argmax is wrong, and a single teacher-forced pass gives it.

On forget text the ideal after unlearning is the oracle's value of each, not 0: natural text is partly
predictable, so a model that never saw a document still gets some of its tokens right.
"""

from __future__ import annotations

from typing import Sequence

# Whose definition each measure follows, for the audit report.
CONVENTIONS = {"exact_memorisation": "exact memorisation (Tirumala et al. 2022)",
               "extraction_strength": "extraction strength (Carlini et al. 2021; Ye et al. 2024)"}


def exact_memorisation(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def extraction_strength(hits: Sequence[bool]) -> float:
    """``hits[t]`` says whether token t+1 is predicted from tokens 0..t. With n tokens (n-1 hits), the shortest
    prefix k (1 <= k <= n) after which every prediction is right gives ``1 - k / n``."""
    n = len(hits) + 1
    last_miss = max((t for t, hit in enumerate(hits) if not hit), default=-1)
    prefix = last_miss + 2  # token last_miss+1 was mispredicted, so it must be in the prefix
    return 1 - prefix / n
