"""The demo's Markdown report and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from obliviate.report.table import count_of, markdown_table


def plot_scores(rows: Sequence[dict], path: str | Path) -> None:
    """Grouped bars of task aggregate, MIA score, utility and final score per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("task_aggregate", "task aggregate"), ("mia_score", "MIA score"), ("utility", "utility"),
               ("final_score", "final score")]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 3.6))
    width = 0.8 / len(metrics)
    for index, (key, label) in enumerate(metrics):
        values = [row.get(key) or 0.0 for row in rows]
        ax.bar([i + index * width for i in range(len(rows))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([row["name"] + verdict_suffix(row) for row in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verdict_suffix(row: dict) -> str:
    """" (broken 2/3, collateral 1/3)" for a row where a gate fired in some run; "" where none did."""
    fired = [f"{name} {row[name]}" if isinstance(row.get(name), str) else name
             for name in ("broken", "collateral") if count_of(row.get(name))]
    return f" ({', '.join(fired)})" if fired else ""


def demo_report(rows: Sequence[dict], *, source: str, command: str, notes: Sequence[str] = ()) -> str:
    lines = [
        "# obliviate demo report",
        "",
        f"Command: `{command}`  ",
        f"Benchmark: {source}",
        "",
        markdown_table(rows),
        "",
        "Columns: F = forget set, R = retain set; T1-T3 = LUME tasks (creative documents, synthetic "
        "biographies with PII, Wikipedia biographies); reg = regurgitation (ROUGE-L recall), kno = knowledge "
        "(exact match). Forget scores: lower is better; retain scores: higher is better. task agg = harmonic "
        "mean of the 12 scores (forget ones as 1 - x). MIA AUC: loss attack, members = forget documents; ideal "
        "0.5. MIA score = 1 - 2|AUC - 0.5|. utility: the micro benchmark's utility set (documents the target "
        "learnt and no method saw). final = mean(task agg, MIA score, utility). The two collapse gates, "
        "counted over runs: collateral = utility below 75% of the target's (other memorised documents lost); "
        "broken = held-out perplexity above 4/3 of the target's, or MMLU below 75% of it (general ability "
        "lost). time: training (target, oracle) or unlearning (methods) wall time.",
        "",
        "![scores](scores.png)",
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
