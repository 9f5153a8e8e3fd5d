"""HTML reports: the demo's (the table, and the plots a reader looks at first) and, from their report.md, the
vision commands'.

One self-contained file (plots embedded as PNG data URIs, no scripts fetched from anywhere): the method table,
forgetting and membership against utility for every run with the oracle marked, per-task bars, the loss attack's ROC
curves, and the training loss of each method. ``report.md`` carries the same table for diffs and terminals.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Sequence

from obliviate.report.table import table_cells

PLOT_IDS = ("tradeoff", "tasks", "roc", "loss")
# The load-time script of every page: for a headless check that every image decoded.
_IMAGES_RENDERED = """<script>
window.addEventListener("load", () => {
  document.body.dataset.plotsRendered = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def _figure_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_of(row: dict, split: str) -> float | None:
    values = [value for key, value in row.items() if key.startswith(f"{split}/") and key.count("/") == 2
              and isinstance(value, (int, float))]
    return sum(values) / len(values) if values else None


def tradeoff_plot(runs: dict[str, list[dict]]) -> str:
    """One point per run, the oracle as a star (the point to reach), in two panels that share the y axis, utility
    (the other documents the target memorised and no method saw: where unlearning does its collateral damage):
    left, forgetting (mean of the 6 forget terms, lower is better); right, membership (the loss attack's AUC,
    0.5 is an attacker who learns nothing). The retain terms are not shown: every method trains on the retain
    set, so they sit near 1 for all and tell the methods apart by nothing."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 4.6), sharey=True)
    for name, entries in runs.items():
        style = ({"marker": "*", "s": 260, "color": "gold", "edgecolor": "black", "zorder": 3} if name == "oracle"
                 else {"marker": "X", "s": 110, "color": "black", "zorder": 3} if name == "target"
                 else {"s": 45, "alpha": 0.8})
        for ax, x_of in ((left, lambda e: _mean_of(e, "forget")), (right, lambda e: e.get("mia_auc"))):
            points = [(x_of(e), e.get("utility")) for e in entries]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                xs, ys = zip(*points)
                ax.scatter(xs, ys, label=name, **style)
    left.set_xlabel("forget score, mean of the 6 forget terms (lower is better)")
    left.set_ylabel("utility: other memorised documents (higher is better)")
    right.set_xlabel("loss-attack AUC on forget vs unseen documents (ideal 0.5)")
    right.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    for ax in (left, right):
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower left")
    fig.suptitle("What each run forgot, against what it kept")
    return _figure_uri(fig)


def task_bars(rows: Sequence[dict]) -> str:
    """Per model, the 12 per-task scores (F/R x task x regurgitation/knowledge), means over its runs."""
    plt = _pyplot()
    keys = [key for key in rows[0] if key.count("/") == 2]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(keys) + 2), 4.2))
    width = 0.8 / max(len(rows), 1)
    for index, row in enumerate(rows):
        ax.bar([i + index * width for i in range(len(keys))], [row.get(k) or 0.0 for k in keys], width,
               label=row["name"])
    labels = [("F" if k.startswith("forget") else "R") + k.split("/")[1].replace("Task", "T") + " "
              + ("reg" if k.endswith("regurgitation") else "kno") for k in keys]
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (forget: lower is better; retain: higher)")
    ax.legend(fontsize=7, ncol=min(len(rows), 4))
    ax.set_title("Per-task scores")
    return _figure_uri(fig)


def roc_plot(evaluations: dict[str, dict]) -> str:
    """The loss attack's ROC curve (members: forget documents; lower loss = member) for the first run of each
    model; the diagonal is an attacker who learns nothing, the ideal after unlearning."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    seen = set()
    for label, value in evaluations.items():
        name = label.split("@")[0]
        losses = (value.get("evaluation") or {}).get("mia_losses")
        if name in seen or not losses or not losses.get("member") or not losses.get("nonmember"):
            continue
        seen.add(name)
        truth = [1] * len(losses["member"]) + [0] * len(losses["nonmember"])
        scores = [-x for x in losses["member"] + losses["nonmember"]]
        fpr, tpr, _ = roc_curve(truth, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(truth, scores):.2f})",
                linewidth=2.5 if name == "oracle" else 1.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="no signal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Loss MIA: ROC (ideal: the diagonal)")
    return _figure_uri(fig)


def loss_plot(evaluations: dict[str, dict]) -> str:
    """Training loss against step for every unlearning run (one colour per method)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours: dict[str, str] = {}
    for label, value in evaluations.items():
        history = (value.get("record") or {}).get("log_history") or []
        points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        if not points:
            continue
        name = label.split("@")[0]
        steps, losses = zip(*points)
        line, = ax.plot(steps, losses, color=colours.get(name), alpha=0.85,
                        label=None if name in colours else name)
        colours.setdefault(name, line.get_color())
    if not colours:
        ax.text(0.5, 0.5, "no training loss recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (the method's objective)")
    if colours:
        ax.legend(fontsize=8)
    ax.set_title("Training loss per run")
    return _figure_uri(fig)


def demo_html(rows: Sequence[dict], runs: dict[str, list[dict]], evaluations: dict[str, dict], *, source: str,
              command: str, notes: Sequence[str] = ()) -> str:
    """The whole report.html."""
    headers, body = table_cells(rows)
    table = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
    table.append("</table>")
    plots = {
        "tradeoff": ("Trade-off", tradeoff_plot(runs)),
        "tasks": ("Per-task scores", task_bars(rows)),
        "roc": ("Membership inference", roc_plot(evaluations)),
        "loss": ("Training", loss_plot(evaluations)),
    }
    figures = [f'<section><h2>{html.escape(title)}</h2><img id="{key}" alt="{html.escape(title)}" src="{uri}">'
               "</section>" for key, (title, uri) in plots.items()]
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>obliviate report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #bbb; padding: 3px 6px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head>
<body>
<h1>obliviate report</h1>
<p>Command: <code>{html.escape(command)}</code><br>Benchmark: {html.escape(source)}</p>
{''.join(table)}
<p>F = forget set, R = retain set, T1-T3 = the LUME tasks, reg = regurgitation (ROUGE-L recall), kno =
knowledge (exact match): forget scores want to be low, retain scores high. MIA AUC: loss attack, ideal 0.5.
final = mean(task agg, MIA score, utility). Values are means ± standard deviations over runs.</p>
{'<ul>' + note_items + '</ul>' if note_items else ''}
{''.join(figures)}
{_IMAGES_RENDERED}
</body></html>
"""


def markdown_report_html(markdown: str, directory, title: str = "obliviate report") -> str:
    """A self-contained report.html from a report.md this project writes (the vision commands'): ``#`` headings,
    pipe tables, paragraphs with `code` spans, and ``![alt](file.png)`` images, which are read from ``directory``
    and embedded as data URIs. Only that subset: anything else is kept as escaped text."""
    from pathlib import Path

    def inline(text: str) -> str:
        parts = text.split("`")
        return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))

    out: list[str] = []
    table: list[list[str]] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", stripped)
        if stripped.startswith("|"):
            if paragraph:
                flush()
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):  # skip the separator row
                table.append(cells)
            continue
        flush()
        if not stripped:
            continue
        heading = re.match(r"(#{1,3}) (.*)", stripped)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif image:
            data = (Path(directory) / image.group(2)).read_bytes()
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            out.append(f'<img alt="{html.escape(image.group(1))}" src="{uri}">')
        else:
            paragraph.append(stripped)
    flush()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 3px 6px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head>
<body>
{chr(10).join(out)}
{_IMAGES_RENDERED}
</body></html>
"""
