"""Plots and a Markdown table for MUSE's scalability and sustainability curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

MEASURES = (("verbmem_forget", "VerbMem on forget (lower is better)"),
            ("knowmem_forget", "KnowMem on forget (lower is better)"),
            ("knowmem_retain", "KnowMem on retain (higher is better)"))


def plot_curve(points: Sequence[dict], original: dict, x_key: str, x_label: str, title: str,
               path: str | Path) -> None:
    """One line per measure against ``x_key``; dashed lines at the original model's values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [point[x_key] for point in points]
    for (key, label), colour in zip(MEASURES, ("tab:red", "tab:orange", "tab:blue")):
        ax.plot(xs, [point[key] for point in points], marker="o", color=colour, label=label)
        ax.axhline(original[key], color=colour, linestyle="--", linewidth=0.8)
    ax.set_xticks(xs)
    ax.set_xlabel(x_label)
    ax.set_ylabel("ROUGE-L F1 (dashed: original model)")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_markdown(result: dict) -> str:
    lines = [f"# MUSE curves: {result['method']}", "", f"Command: `{result['command']}`", "",
             "VerbMem and KnowMem are ROUGE-L F1. Forget measures: lower is better (the original model's values "
             "are the starting point); retain KnowMem: higher is better.", ""]
    header = "| {} | documents | VerbMem forget | KnowMem forget | KnowMem retain | unlearn s |"
    original = result["original"]
    if "scalability" in result:
        lines += ["## Scalability (each run from the original model)", "", header.format("forget fraction"),
                  "|---|---|---|---|---|---|",
                  f"| original | all | {original['verbmem_forget']:.3f} | {original['knowmem_forget']:.3f} | "
                  f"{original['knowmem_retain']:.3f} | |"]
        lines += [f"| {p['fraction']:g} | {p['documents']} | {p['verbmem_forget']:.3f} | {p['knowmem_forget']:.3f} "
                  f"| {p['knowmem_retain']:.3f} | {p['unlearn_seconds']:.1f} |" for p in result["scalability"]]
        lines.append("")
    if "sustainability" in result:
        lines += ["## Sustainability (each request from the previous result; measures on all forgotten so far)",
                  "", header.format("request"), "|---|---|---|---|---|---|",
                  f"| original | all | {original['verbmem_forget']:.3f} | {original['knowmem_forget']:.3f} | "
                  f"{original['knowmem_retain']:.3f} | |"]
        lines += [f"| {p['request']} | {p['documents']} | {p['verbmem_forget']:.3f} | {p['knowmem_forget']:.3f} "
                  f"| {p['knowmem_retain']:.3f} | {p['unlearn_seconds']:.1f} |" for p in result["sustainability"]]
        lines.append("")
    return "\n".join(lines)
