"""Utility: what the model still knows that unlearning must not destroy.

* MMLU accuracy as SemEval-2025 Task 4 measured it (the open-instruct evaluation): ``k``-shot prompts from the
  dev split, the answer chosen by the highest next-token probability among " A", " B", " C", " D", accuracy
  averaged over all questions.
* For the micro benchmark, its utility set: LUME probes on documents the target learnt and no method saw;
  utility = mean over tasks of (regurgitation + knowledge) / 2.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from obliviate.batching import longest_first_batches, pad_id_of, pad_sequences
from obliviate.data.mmlu import CHOICES, Question, load_mmlu
from obliviate.progress import progress_bar

MAX_PROMPT_TOKENS = 2048


def format_subject(subject: str) -> str:
    return "".join(" " + part for part in subject.split("_"))


def format_question(question: Question, include_answer: bool) -> str:
    text = question.question
    for letter, option in zip(CHOICES, question.options):
        text += f"\n{letter}. {option}"
    text += "\nAnswer:"
    if include_answer:
        text += f" {question.answer}\n\n"
    return text


def mmlu_prompt(tokenizer, question: Question, dev: Sequence[Question], shots: int) -> str:
    """The k-shot prompt; fewer shots when it would exceed 2048 tokens."""
    k = min(shots, len(dev))
    while True:
        header = f"The following are multiple choice questions (with answers) about{format_subject(question.subject)}.\n\n"
        prompt = header + "".join(format_question(q, True) for q in dev[:k]) + format_question(question, False)
        if k == 0 or len(tokenizer(prompt, add_special_tokens=False).input_ids) <= MAX_PROMPT_TOKENS:
            return prompt
        k -= 1


def mmlu_accuracy(model, tokenizer, mmlu_dir: str | Path, *, shots: int = 5, limit_per_subject: int | None = None,
                  subjects: list[str] | None = None, batch_size: int = 8, seed: int = 42) -> dict:
    """Average accuracy over all questions, and per subject."""
    data = load_mmlu(mmlu_dir, subjects)
    items: list[tuple[str, str, str]] = []  # subject, prompt, answer
    for subject, (dev, test) in data.items():
        if limit_per_subject is not None and limit_per_subject < len(test):
            test = random.Random(seed).sample(test, limit_per_subject)
        items += [(subject, mmlu_prompt(tokenizer, q, dev, shots), q.answer) for q in test]
    from obliviate.distributed import shard_map

    # Each process scores a shard of the questions under ``accelerate launch``; one process scores them all.
    predicted = shard_map(lambda prompts: predict_choices(model, tokenizer, prompts, batch_size),
                          [prompt for _, prompt, _ in items])
    correct = [letter == answer for letter, (_, _, answer) in zip(predicted, items)]
    per_subject = {}
    for subject in data:
        flags = [c for (s, _, _), c in zip(items, correct) if s == subject]
        per_subject[subject] = sum(flags) / len(flags) if flags else float("nan")
    return {"average_acc": sum(correct) / len(correct) if correct else float("nan"), "questions": len(items),
            "shots": shots, "subjects": per_subject}


def predict_choices(model, tokenizer, prompts: Sequence[str], batch_size: int = 8) -> list[str]:
    """The letter whose " A".." D" token is most probable after each prompt."""
    import torch

    choice_ids = [tokenizer.encode(" " + letter, add_special_tokens=False)[-1] for letter in CHOICES]
    device = next(model.parameters()).device
    encoded = [tokenizer(prompt).input_ids for prompt in prompts]
    predicted = [""] * len(prompts)
    model.eval()
    with torch.no_grad(), progress_bar(total=len(prompts), desc="MMLU", unit="question") as bar:
        for indices in longest_first_batches([len(ids) for ids in encoded], batch_size):
            # Left padding: every prompt's last token sits at position -1.
            input_ids, attention_mask = pad_sequences([encoded[i] for i in indices], pad_id_of(tokenizer),
                                                      side="left")
            # Only the last position's logits: a 50k vocabulary over every position of 5-shot prompts is a GB a batch.
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                           logits_to_keep=1).logits[:, -1]
            for i, choice in zip(indices, logits[:, choice_ids].argmax(dim=-1).tolist()):
                predicted[i] = CHOICES[choice]
            bar.update(len(indices))
    return predicted


def utility_set_score(split_result: dict) -> float:
    """Mean over tasks of (regurgitation + knowledge) / 2, from a ``score_split`` result."""
    from obliviate.audit.lume import task_scores

    tasks = task_scores(split_result)
    return sum((t["regurgitation-score"] + t["knowledge-score"]) / 2 for t in tasks.values()) / len(tasks)
