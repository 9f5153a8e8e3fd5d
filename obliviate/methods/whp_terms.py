"""WHP's anchored terms (Eldan and Russinovich, 2023, Section 2.2): a dictionary from forget-specific
expressions to generic ones, the "translation" of a text with it, and the user's own dictionary file.

The paper had GPT-4 list the idiosyncratic expressions of the Harry Potter books and propose generic
counterparts. Here the dictionary is built from the data, deterministically:

* **Candidates** are the words of the forget text (runs of ``\\w``), in three kinds: *names* (capitalised words
  whose lower-case form the texts never use, so "Harry" but not a sentence-initial "The"), runs of two or more
  capitalised words separated by single spaces ("Harry Potter", "Great Hall"; a run does not start with a
  sentence-initial common word), *numbers* of two digits or more, and lower-case *words* of four letters or
  more (not the stem of a contraction: "couldn" in "couldn't"). A candidate occurs at least ``min_count`` times
  in the forget text.
* **Distinctiveness**: ``log(forget rate / retain rate)``, rates smoothed as ``(count + 0.5) / (words + 1)``.
  A candidate must be at least twice as frequent (relatively) in the forget text as in the retain text; a
  lower-case word must not occur in the retain text at all (on small sets common words pass the ratio by chance)
  nor be one of ``common_words``: WHP passes the words its tokenizer encodes as a single token, since a
  tokenizer trained on a large general corpus keeps whole only frequent words ("them", "mother"), while
  idiosyncratic vocabulary ("quidditch") comes out in pieces.
* **Score** = distinctiveness + the term's likelihood gain: the mean, over the tokens of its occurrences, of
  ``log p_reinforced(token) - log p_baseline(token)`` (both log ratios, so they add: a term is distinctive if
  the forget text uses it more than the retain text does, and if reinforcement made it more likely). Terms
  with a positive score are ranked by it and the first ``max_terms`` kept.
* **Replacements** come from the retain text, of the same kind, each term a different one: a name becomes a
  capitalised retain word the forget text never uses (a run maps word by word, so "Harry Potter" -> "Jon
  Smith" when "Harry" -> "Jon"); a word becomes a common retain word absent from the forget text with the same
  ending class (-ing, -ed, -ly, -s, other); a number becomes different digits of the same length. The retain
  pools (the most frequent ``4 x needed`` entries, at least 20) are shuffled with the run's seed; numbers
  draw from ``random.Random(f"{seed}:{number}")``. Same inputs and seed, same dictionary.

A user's file replaces the whole automatic dictionary (``anchors=FILE``, JSON or YAML, ``{term:
replacement}``); the run's record lists the automatic one, ready to be edited and passed back.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Sequence

from obliviate.errors import InputError

_WORD = re.compile(r"\w+")
_SENTENCE_BREAK = set(".!?:;\"“”'‘’()[]-–—\n")
MIN_DISTINCTIVENESS = math.log(2.0)  # at least twice as frequent in the forget text as in the retain text
_ENDINGS = ("ing", "ed", "ly", "s")


@dataclass
class Candidate:
    """A forget-text expression that may become an anchored term."""

    term: str
    kind: str  # "name", "number" or "word"
    forget_count: int = 0
    retain_count: int = 0
    # (text index, start, end) of each occurrence in the forget texts
    occurrences: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Replacement:
    """One translated span: ``original[start:end]`` became ``translated[new_start:new_end]``."""

    start: int
    end: int
    new_start: int
    new_end: int


# Words -------------------------------------------------------------------------------------------------------

def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


def _kind(word: str) -> str | None:
    if word.isdigit():
        return "number"
    if word.isalpha():
        return "name" if word[0].isupper() else "word"
    return None  # mixed letters and digits: codes, left alone


def _contraction_stem(text: str, end: int) -> bool:
    """Whether the word ending at ``end`` is the first part of a contraction ("couldn" in "couldn't")."""
    return text[end:end + 1] in ("'", "’") and text[end + 1:end + 2].isalpha()


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start]
    stripped = before.rstrip()
    return not stripped or stripped[-1] in _SENTENCE_BREAK or "\n" in before[len(stripped):]


def lower_case_words(texts: Sequence[str]) -> set[str]:
    """The alphabetic words the texts use in lower case ("the", "great"): a capitalised one of these is a common
    word at the start of a sentence (or in a title), not a name."""
    return {m.group() for text in texts for m in _WORD.finditer(text) if m.group().isalpha() and m.group().islower()}


def _capitalised_runs(text: str, matches: list[re.Match]) -> list[list[re.Match]]:
    """Maximal runs of capitalised alphabetic words separated by exactly one space."""
    runs, run = [], []
    for match in matches:
        word = match.group()
        if word.isalpha() and word[0].isupper():
            if run and text[run[-1].end():match.start()] == " ":
                run.append(match)
                continue
            if len(run) > 1:
                runs.append(run)
            run = [match]
        else:
            if len(run) > 1:
                runs.append(run)
            run = []
    if len(run) > 1:
        runs.append(run)
    return runs


def _spans(text: str, run: list[re.Match], common: set[str]):
    """Every contiguous sub-run of two or more words, except those starting with a sentence-initial common word."""
    for first in range(len(run)):
        head = run[first].group()
        if head.lower() in common and _sentence_initial(text, run[first].start()):
            continue
        for last in range(first + 1, len(run)):
            yield text[run[first].start():run[last].end()], run[first].start(), run[last].end()


def find_candidates(forget_texts: Sequence[str], retain_texts: Sequence[str], min_count: int = 2) -> list[Candidate]:
    """Every candidate that occurs at least ``min_count`` times in the forget texts, with its counts in both
    sets and its forget occurrences, sorted by term."""
    common = lower_case_words(list(forget_texts) + list(retain_texts))
    found: dict[str, Candidate] = {}

    def add(term, kind, index, start, end):
        candidate = found.setdefault(term, Candidate(term, kind))
        candidate.forget_count += 1
        candidate.occurrences.append((index, start, end))

    for index, text in enumerate(forget_texts):
        matches = _words(text)
        for match in matches:
            word, kind = match.group(), _kind(match.group())
            if kind == "number" and len(word) < 2 or kind == "name" and len(word) < 2 or \
                    kind == "word" and len(word) < 4:
                continue
            if kind == "name" and word.lower() in common:
                continue
            if kind == "word" and _contraction_stem(text, match.end()):
                continue
            if kind is not None:
                add(word, kind, index, match.start(), match.end())
        for run in _capitalised_runs(text, matches):
            for term, start, end in _spans(text, run, common):
                add(term, "name", index, start, end)
    kept = {term: c for term, c in found.items() if c.forget_count >= min_count}
    retain_counts = _retain_counts(retain_texts, common)
    for term, candidate in kept.items():
        candidate.retain_count = retain_counts.get(term, 0)
    return [kept[term] for term in sorted(kept)]


def _retain_counts(retain_texts: Sequence[str], common: set[str]) -> Counter:
    counts: Counter = Counter()
    for text in retain_texts:
        matches = _words(text)
        counts.update(m.group() for m in matches)
        for run in _capitalised_runs(text, matches):
            counts.update(term for term, _, _ in _spans(text, run, common))
    return counts


def word_count(texts: Sequence[str]) -> int:
    return sum(len(_words(text)) for text in texts)


def distinctiveness(forget_count: int, retain_count: int, forget_words: int, retain_words: int) -> float:
    """``log(forget rate / retain rate)`` with rates ``(count + 0.5) / (words + 1)``."""
    return math.log((forget_count + 0.5) / (forget_words + 1)) - math.log((retain_count + 0.5) / (retain_words + 1))


def term_likelihood_gains(candidates: Sequence[Candidate], offsets: Sequence[Sequence],
                          token_gains: Sequence[Sequence[float]]) -> dict[str, float]:
    """Each candidate's mean ``log p_reinforced - log p_baseline`` over the tokens of its forget occurrences.

    ``offsets[i][k]`` is token k's character span in forget text i (None for a token without one) and
    ``token_gains[i][k]`` its gain (token 0 has none: nothing predicts it). A token counts for an occurrence if
    its span overlaps it; occurrences cut off by truncation count no token. Candidates without tokens get 0."""
    # Token spans are in text order: the first token that can overlap an occurrence is found by bisection.
    ends = []
    for spans in offsets:
        running, row = 0, []
        for span in spans:
            running = max(running, span[1]) if span is not None else running
            row.append(running)
        ends.append(row)
    gains = {}
    for candidate in candidates:
        values = []
        for index, start, end in candidate.occurrences:
            spans = offsets[index]
            for k in range(max(1, bisect.bisect_right(ends[index], start)), len(spans)):
                span = spans[k]
                if span is None or span[0] == span[1]:
                    continue
                if span[0] >= end:
                    break
                values.append(token_gains[index][k])
        gains[candidate.term] = sum(values) / len(values) if values else 0.0
    return gains


# The dictionary ----------------------------------------------------------------------------------------------

@dataclass
class AnchorChoice:
    """The automatic dictionary and how it was chosen (kept in the run's record)."""

    anchors: dict[str, str]
    scores: dict[str, float]
    candidates: int
    unanchored: list[str]  # selected terms no replacement could be found for (an empty retain pool)


def rank_candidates(candidates: Sequence[Candidate], forget_words: int, retain_words: int,
                    gains: dict[str, float] | None = None, max_terms: int = 200,
                    common_words: Collection[str] = ()) -> list[tuple[Candidate, float]]:
    """The candidates that are distinctive enough, with their scores, best first (ties by term)."""
    common_words = set(common_words)
    ranked = []
    for candidate in candidates:
        distinct = distinctiveness(candidate.forget_count, candidate.retain_count, forget_words, retain_words)
        score = distinct + (gains or {}).get(candidate.term, 0.0)
        # A lower-case word must be absent from the retain text: rare common words ("them", "dark") pass the
        # frequency ratio by chance on small sets, and idiosyncratic vocabulary is what the rest never uses.
        absent = candidate.kind != "word" or candidate.retain_count == 0 and candidate.term not in common_words
        if distinct >= MIN_DISTINCTIVENESS and score > 0 and absent:
            ranked.append((candidate, score))
    ranked.sort(key=lambda pair: (-pair[1], pair[0].term))
    return ranked[:max_terms]


def _ending(word: str) -> str:
    return next((ending for ending in _ENDINGS if word.endswith(ending)), "")


def _pool(counts: Counter, needed: int, rng: random.Random) -> list[str]:
    """The most frequent ``max(4 * needed, 20)`` entries, shuffled by the seeded generator."""
    ordered = sorted(counts, key=lambda word: (-counts[word], word))[:max(4 * needed, 20)]
    rng.shuffle(ordered)
    return ordered


def _other_number(number: str, seed: int) -> str:
    rng = random.Random(f"{seed}:{number}")
    while True:
        digits = [rng.choice("0123456789") for _ in number]
        if number[0] != "0" and len(number) > 1:
            digits[0] = rng.choice("123456789")
        replacement = "".join(digits)
        if replacement != number:
            return replacement


def choose_anchors(candidates: Sequence[Candidate], forget_texts: Sequence[str], retain_texts: Sequence[str], *,
                   gains: dict[str, float] | None = None, max_terms: int = 200, seed: int = 0,
                   common_words: Collection[str] = ()) -> AnchorChoice:
    """The automatic dictionary: rank the candidates, then give each kept term a replacement of its kind."""
    ranked = rank_candidates(candidates, word_count(forget_texts), word_count(retain_texts), gains, max_terms,
                             common_words)
    common = lower_case_words(list(forget_texts) + list(retain_texts))
    forget_vocabulary = {m.group().lower() for text in forget_texts for m in _WORD.finditer(text)}
    names: Counter = Counter()
    words: dict[str, Counter] = {}
    for text in retain_texts:
        for match in _WORD.finditer(text):
            word = match.group()
            if not word.isalpha() or word.lower() in forget_vocabulary:
                continue
            if word[0].isupper() and word[1:].islower() and len(word) >= 3 and word.lower() not in common:
                names[word] += 1
            elif word.islower() and len(word) >= 4:
                words.setdefault(_ending(word), Counter())[word] += 1
    rng = random.Random(seed)
    name_words = sorted({w for c, _ in ranked if c.kind == "name" for w in c.term.split(" ")})
    name_pool = _pool(names, len(name_words), rng)
    word_pools = {ending: _pool(counts, len(ranked), rng) for ending, counts in sorted(words.items())}
    used: set[str] = set()
    by_word: dict[str, str] = {}  # one replacement per name word, shared by every run it appears in

    def take(pool: list[str]) -> str | None:
        fresh = next((entry for entry in pool if entry not in used), None)
        if fresh is None and pool:  # more terms than pool entries: reuse, in order
            fresh = pool[len(used) % len(pool)]
        if fresh is not None:
            used.add(fresh)
        return fresh

    def name_for(word: str) -> str | None:
        if word not in by_word:
            replacement = take(name_pool)
            if replacement is None:
                return None
            by_word[word] = replacement
        return by_word[word]

    anchors, scores, unanchored = {}, {}, []
    # Single names first, best first, so a name keeps its own replacement inside the runs that contain it.
    for candidate, score in sorted(ranked, key=lambda pair: (" " in pair[0].term, -pair[1], pair[0].term)):
        term = candidate.term
        if candidate.kind == "number":
            replacement = _other_number(term, seed)
        elif candidate.kind == "name":
            parts = [name_for(word) for word in term.split(" ")]
            replacement = None if None in parts else " ".join(parts)
        else:
            pool = word_pools.get(_ending(term)) or next((p for p in word_pools.values() if p), [])
            replacement = take(pool)
        if replacement is None:
            unanchored.append(term)
            continue
        anchors[term] = replacement
        scores[term] = round(score, 4)
    ordered = [c.term for c, _ in ranked if c.term in anchors]
    return AnchorChoice(anchors={t: anchors[t] for t in ordered}, scores={t: scores[t] for t in ordered},
                        candidates=len(candidates), unanchored=unanchored)


def build_anchors(forget_texts: Sequence[str], retain_texts: Sequence[str], *, min_count: int = 2,
                  max_terms: int = 200, seed: int = 0, gains: dict[str, float] | None = None,
                  common_words: Collection[str] = ()) -> AnchorChoice:
    """Candidates, ranking and replacements in one call (``gains``: per-term likelihood gains, if any)."""
    candidates = find_candidates(forget_texts, retain_texts, min_count)
    return choose_anchors(candidates, forget_texts, retain_texts, gains=gains, max_terms=max_terms, seed=seed,
                          common_words=common_words)


def single_token_words(tokenizer, words: Iterable[str]) -> set[str]:
    """The words ``tokenizer`` encodes as one token after a space (counted as the tokens "a WORD" adds to "a",
    so a BOS or a sentencepiece prefix cancels out)."""
    base = len(tokenizer("a").input_ids)
    return {word for word in words if len(tokenizer(f"a {word}").input_ids) - base == 1}


# Translation -------------------------------------------------------------------------------------------------

def anchor_pattern(anchors: dict[str, str]) -> re.Pattern | None:
    """One regex matching every term, longest first (so "Harry Potter" wins over "Harry"), where it is not part of
    a longer word: a term that starts (ends) with a word character must not be preceded (followed) by one."""
    if not anchors:
        return None
    parts = []
    for term in sorted(anchors, key=lambda t: (-len(t), t)):
        before = r"(?<!\w)" if re.match(r"\w", term[0]) else ""
        after = r"(?!\w)" if re.match(r"\w", term[-1]) else ""
        parts.append(f"{before}{re.escape(term)}{after}")
    return re.compile("|".join(parts))


def translate(text: str, anchors: dict[str, str], pattern: re.Pattern | None = None) -> tuple[str, list[Replacement]]:
    """``text`` with every anchored term replaced, left to right without overlaps, and where each replacement
    went."""
    pattern = pattern if pattern is not None else anchor_pattern(anchors)
    if pattern is None:
        return text, []
    pieces, replacements, cursor, shift = [], [], 0, 0
    for match in pattern.finditer(text):
        generic = anchors[match.group()]
        pieces.append(text[cursor:match.start()])
        pieces.append(generic)
        new_start = match.start() + shift
        replacements.append(Replacement(match.start(), match.end(), new_start, new_start + len(generic)))
        shift += len(generic) - (match.end() - match.start())
        cursor = match.end()
    pieces.append(text[cursor:])
    return "".join(pieces), replacements


# The user's dictionary ---------------------------------------------------------------------------------------

def load_anchors(path: str | Path) -> dict[str, str]:
    """``{term: replacement}`` from a JSON (``.json``) or YAML file; every error names the file, and the term
    (as the field) when one entry is at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError("anchored-terms file not found", path=path, field="anchors")
    text = path.read_text(encoding="utf-8")
    lines: dict[str, int] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"invalid JSON ({error.msg})", path=path, line=error.lineno) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
            lines = _yaml_key_lines(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            raise InputError(f"invalid YAML ({getattr(error, 'problem', error)})", path=path,
                             line=None if mark is None else mark.line + 1) from None
    if not isinstance(data, dict) or not data:
        raise InputError("expected a non-empty mapping of term: replacement", path=path, field="anchors")
    anchors = {}
    for term, replacement in data.items():
        where = {"path": path, "line": lines.get(str(term)), "field": str(term)}
        if not isinstance(term, str) or not term.strip():
            raise InputError("a term must be a non-empty string (quote numbers)", **where)
        if not isinstance(replacement, str) or not replacement:
            raise InputError(f"the replacement must be a non-empty string (quote numbers), got {replacement!r}",
                             **where)
        anchors[term] = replacement
    return anchors


def _yaml_key_lines(text: str) -> dict[str, int]:
    import yaml

    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
