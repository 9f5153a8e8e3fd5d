"""Utility measures on fixed inputs: MMLU with a dummy scorer of known preferences, the utility-set score."""

import pytest
import torch

from obliviate.audit.utility import mmlu_accuracy, mmlu_prompt, utility_set_score
from obliviate.data.mmlu import Question


class LetterModel(torch.nn.Module):
    """A weightless scorer: its next-token logits always prefer one token id."""

    def __init__(self, vocab_size: int, preferred: int):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size, self.preferred = vocab_size, preferred

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):  # transformers' causal-LM interface
        positions = input_ids.shape[1] if logits_to_keep == 0 else logits_to_keep
        logits = torch.zeros(input_ids.shape[0], positions, self.vocab_size)
        logits[..., self.preferred] = 5.0
        return type("Output", (), {"logits": logits})()


def test_mmlu_accuracy_with_a_scorer_that_always_says_b(tmp_path, tiny_tokenizer):
    for split in ("test", "dev"):
        (tmp_path / split).mkdir()
    answers = ["B", "A", "B", "C", "B", "D", "B", "B"]
    (tmp_path / "test" / "toy_test.csv").write_text("".join(f"Q{i},w,x,y,z,{a}\n" for i, a in enumerate(answers)))
    (tmp_path / "dev" / "toy_dev.csv").write_text("D0,w,x,y,z,A\nD1,w,x,y,z,C\n")
    b_token = tiny_tokenizer.encode(" B", add_special_tokens=False)[-1]
    model = LetterModel(len(tiny_tokenizer), b_token)
    result = mmlu_accuracy(model, tiny_tokenizer, tmp_path, shots=2, batch_size=3)
    assert result["average_acc"] == pytest.approx(5 / 8)
    assert result["subjects"] == {"toy": pytest.approx(5 / 8)} and result["questions"] == 8
    limited = mmlu_accuracy(model, tiny_tokenizer, tmp_path, shots=0, limit_per_subject=4)
    assert limited["questions"] == 4


def test_mmlu_prompt_is_the_open_instruct_format(tiny_tokenizer):
    dev = [Question("high_school_math", "1+1?", ("1", "2", "3", "4"), "B")]
    question = Question("high_school_math", "2+2?", ("4", "5", "6", "7"), "A")
    assert mmlu_prompt(tiny_tokenizer, question, dev, shots=5) == (
        "The following are multiple choice questions (with answers) about high school math.\n\n"
        "1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2+2?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:")


def test_utility_set_score_is_the_mean_over_tasks_of_both_scores():
    split = {"overall-regurgitation-score": 0.0, "overall-knowledge-score": 0.0,
             "Task1": {"regurgitation-score": 1.0, "knowledge-score": 0.5},
             "Task2": {"regurgitation-score": 0.5, "knowledge-score": 0.0}}
    assert utility_set_score(split) == pytest.approx((0.75 + 0.25) / 2)
