"""LAF against retraining and the supervised baselines: every forget request x seed x method, one table each.

For each forget request (``class:C``, ``random:F``, ``noisy:F``) and seed: the forget set is drawn with the seed,
the original model is trained with it on the labels as given (noisy ones for ``noisy``) and cached, every method
unlearns a copy of it, and every model is evaluated (:func:`obliviate.vision.laf.evaluate`). The original model
is a row of its own (what unlearning starts from); ``retrain`` is trained from scratch on the remaining data with
the same recipe and seed (cached; its time is its recorded training time). Means ± sample standard deviations
over the seeds.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from obliviate.errors import InputError
from obliviate.progress import progress_bar
from obliviate.vision.data import ForgetSpec, build_forget_set, split_images

METRICS = ("retain_acc", "forget_acc", "test_acc", "test_kept_acc", "test_forgot_acc", "forget_true_acc", "mia_auc",
           "seconds")
# A request is refused unless the original model gets at least this much more of the forget images' labels (as
# trained) right than the model retrained without them: below it, unlearning has nothing to remove, and every
# method, doing nothing included, matches retraining within the seeds' spread.
MIN_FORGET_GAP = 0.05

HEADERS = {"retain_acc": "retain acc", "forget_acc": "forget acc", "test_acc": "test acc",
           "test_kept_acc": "test acc (kept classes)", "test_forgot_acc": "test acc (forgotten class)",
           "forget_true_acc": "forget acc (true labels)", "mia_auc": "MIA AUC", "seconds": "time (s)"}


@dataclass(frozen=True)
class ExperimentConfig:
    data: str = "mnist"
    forgets: tuple[ForgetSpec, ...] = (ForgetSpec("class", 3.0),)
    methods: tuple[str, ...] = ("laf", "laf+r", "retrain", "finetune", "ga", "randlabel")
    seeds: tuple[int, ...] = (0, 1, 2)
    test_fraction: float = 0.2
    split_seed: int = 0
    cache_dir: Path | None = None
    cnn: object = None  # CNNConfig; typed loosely so that importing this module does not import torch
    train: object = None  # TrainConfig
    laf: object = None  # LAFConfig
    baselines: object = None  # BaselineConfig


@dataclass
class Results:
    config: dict
    runs: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def run_experiment(config: ExperimentConfig, log=print) -> Results:
    from obliviate.studies.targets import default_cache_dir
    from obliviate.vision import laf as L

    cnn = config.cnn or L.CNNConfig()
    laf = config.laf or L.LAFConfig()
    baselines = config.baselines or L.BaselineConfig()
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir() / "vision" / "laf"
    start = time.perf_counter()
    split = split_images(config.data, config.test_fraction, config.split_seed)
    train = (config.train or L.TrainConfig()).for_data(len(split.train_labels))
    log(f"data: {config.data}, {len(split.train_labels)} training and {len(split.test_labels)} test images of "
        f"{split.train_images.shape[1]}x{split.train_images.shape[2]} pixels; original and retrained models "
        f"{train.epochs} passes")
    results = Results(config={
        "data": config.data, "forgets": [spec.name for spec in config.forgets], "methods": list(config.methods),
        "seeds": list(config.seeds), "test_fraction": config.test_fraction, "split_seed": config.split_seed,
        "cnn": asdict(cnn), "train": asdict(train), "laf": asdict(laf), "baselines": asdict(baselines),
        "torch_threads": L.torch.get_num_threads(), "machine": platform.machine()})
    # First every request's original and retrained models (cached), so that a request with nothing to forget is
    # refused before any unlearning is run.
    prepared = []
    for spec in config.forgets:
        for seed in config.seeds:
            forget_set = build_forget_set(spec, split.train_labels, seed)
            task = L.Task.build(split, forget_set, seed)
            original, seconds, loaded = L.cached_classifier(
                split.train_images, forget_set.train_labels, cnn, train, seed, cache, desc=f"original s{seed}")
            log(f"{spec.name} seed {seed}: original {'loaded' if loaded else 'trained'} "
                f"({seconds:.1f} s to train); forget {int(forget_set.forget.sum())} of {len(forget_set.forget)}")
            retain = forget_set.retain

            def retrain(retain=retain, seed=seed, forget_set=forget_set):
                model, seconds, _ = L.cached_classifier(split.train_images[retain], forget_set.train_labels[retain],
                                                        cnn, train, seed, cache, desc=f"retrain s{seed}")
                return model, seconds

            before = L.evaluate(original, task)
            check_something_to_forget(spec, seed, before["forget_acc"], L.evaluate(retrain()[0], task)["forget_acc"])
            prepared.append((spec, seed, task, original, before, seconds, retrain))

    total = len(prepared) * (1 + len(config.methods))
    with progress_bar(total, "laf runs", unit="model") as bar:
        for spec, seed, task, original, before, seconds, retrain in prepared:
            results.runs.append(_run(spec, seed, "original", before, seconds, {}))
            bar.update()
            for method in config.methods:
                model, seconds, extra = L.run_method(method, original, task, laf, baselines, seed, retrain)
                metrics = L.evaluate(model, task)
                results.runs.append(_run(spec, seed, method, metrics, seconds, extra))
                log(f"  {spec.name} seed {seed} {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
                    + f", {seconds:.1f} s")
                bar.update()
    results.rows = summarise(results.runs, [spec.name for spec in config.forgets], ["original", *config.methods])
    results.seconds = time.perf_counter() - start
    return results


def check_something_to_forget(spec: ForgetSpec, seed: int, original_acc: float, retrained_acc: float) -> None:
    """Refuse a request whose forget images the original model classifies (by the labels it was trained on)
    about as well as the model retrained without them: there is nothing for unlearning to remove."""
    if original_acc - retrained_acc < MIN_FORGET_GAP:
        raise InputError(
            f"{spec.name} (seed {seed}) leaves nothing to forget: the original model gets {original_acc:.3f} of "
            f"the forget images' labels as trained right, the model retrained without them {retrained_acc:.3f} "
            f"(the gap must be {MIN_FORGET_GAP} or more); drop it from --forget"
            + (" or train the original longer (--original min_steps=N)" if spec.kind == "noisy" else ""),
            field="forget")


def _run(spec: ForgetSpec, seed: int, method: str, metrics: dict, seconds: float, extra: dict) -> dict:
    return {"forget": spec.name, "seed": seed, "method": method, **metrics, "seconds": seconds, **extra}


def summarise(runs: list[dict], forgets: list[str], methods: list[str]) -> list[dict]:
    """One row per (forget request, method): ``{metric: [mean, std, n]}`` (sample std; 0 for one seed)."""
    rows = []
    for forget in forgets:
        for method in methods:
            chosen = [run for run in runs if run["forget"] == forget and run["method"] == method]
            if not chosen:
                continue
            row = {"forget": forget, "method": method}
            for metric in METRICS:
                values = np.array([run[metric] for run in chosen if metric in run], dtype=float)
                if len(values):
                    row[metric] = [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                   len(values)]
            rows.append(row)
    return rows


def markdown_tables(rows: list[dict]) -> str:
    """One Markdown table per forget request: mean ± std over seeds."""
    parts = []
    for forget in dict.fromkeys(row["forget"] for row in rows):
        chosen = [row for row in rows if row["forget"] == forget]
        metrics = [m for m in METRICS if any(m in row for row in chosen)]
        parts.append(f"**forget {forget}**\n")
        parts.append("| method | " + " | ".join(HEADERS[m] for m in metrics) + " |")
        parts.append("|---" * (len(metrics) + 1) + "|")
        for row in chosen:
            cells = []
            for metric in metrics:
                if metric not in row:
                    cells.append("-")
                elif metric == "seconds":
                    cells.append(f"{row[metric][0]:.1f}")
                else:
                    cells.append(f"{row[metric][0]:.3f} ± {row[metric][1]:.3f}")
            parts.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def plot(rows: list[dict], runs: list[dict], path: Path) -> None:
    """Bars (mean ± std) of retain, forget and test accuracy and the attack's AUC, one row of panels per forget
    request, the retrained model's mean dashed; a last column with LAF's two losses per epoch (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forgets = list(dict.fromkeys(row["forget"] for row in rows))
    metrics = ("retain_acc", "forget_acc", "test_acc", "mia_auc")
    figure, axes = plt.subplots(len(forgets), len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.2 * len(forgets)),
                                squeeze=False)
    for r, forget in enumerate(forgets):
        chosen = [row for row in rows if row["forget"] == forget]
        names = [row["method"] for row in chosen]
        for c, metric in enumerate(metrics):
            axis = axes[r][c]
            means = [row[metric][0] for row in chosen]
            stds = [row[metric][1] for row in chosen]
            colours = ["tab:red" if name.startswith("laf") else "tab:green" if name == "retrain"
                       else "tab:gray" if name == "original" else "tab:blue" for name in names]
            axis.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
            retrain = [row[metric][0] for row in chosen if row["method"] == "retrain"]
            if retrain:
                axis.axhline(retrain[0], color="tab:green", linestyle="--", linewidth=1)
            axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            axis.set_ylim(0, 1.05)
            axis.set_title(f"{forget}: {HEADERS[metric]}", fontsize=9)
        axis = axes[r][-1]
        # LAF+R's extractor stages are LAF's (same seed), so one pair of curves is drawn.
        for method, colour in (("laf", "tab:red"), ("laf+r", "tab:orange")):
            laf_runs = [run for run in runs if run["forget"] == forget and run["method"] == method]
            if laf_runs and not axis.lines:
                stage1 = np.mean([run["extractor_loss"] for run in laf_runs], axis=0)
                stage2 = np.mean([run["alignment_loss"] for run in laf_runs], axis=0)
                axis.plot(stage1, color=colour, label=f"{method} stage 1 (L_UE)")
                axis.plot(stage2, color=colour, linestyle=":", label=f"{method} stage 2 (L_RA)")
        axis.set_xlabel("epoch", fontsize=8)
        axis.set_title(f"{forget}: LAF losses per epoch", fontsize=9)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report_markdown(results: Results, command: str | None = None) -> str:
    lines = ["# Label-Agnostic Forgetting (Shen et al. 2024) against retraining and supervised baselines", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    config = results.config
    lines += [f"Data: {config['data']} (test fraction {config['test_fraction']}, split seed {config['split_seed']}); "
              f"seeds {', '.join(map(str, config['seeds']))}; mean ± sample std over seeds. Accuracies on forget "
              "data use the labels the model was trained on (flipped ones for noisy); the MIA is a loss-threshold "
              "attack's AUC, forget images against test images of the same kind (0.5: indistinguishable; "
              "retrain is the value to match). Time: the method's wall time (retrain: its training time).", "",
              markdown_tables(results.rows), "![metrics](laf.png)", "",
              f"Total wall time {results.seconds:.0f} s.", ""]
    return "\n".join(lines)
