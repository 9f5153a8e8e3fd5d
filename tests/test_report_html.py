"""The HTML report: its table and plots, and a render in headless Chromium (Debian's `chromium`)."""

import base64
import os
import re
import shutil
import subprocess

import pytest

from obliviate.report.html import PLOT_IDS, demo_html, markdown_report_html

TASKS = ("Task1", "Task2", "Task3")


def _run(name, forget, retain, seed):
    row = {"name": name}
    for split, value in (("forget", forget), ("retain", retain)):
        for task in TASKS:
            for kind in ("regurgitation", "knowledge"):
                row[f"{split}/{task}/{kind}"] = value
    row.update(task_aggregate=1 - forget, mia_auc=0.5 + forget / 2, mia_score=1 - forget, utility=retain,
               heldout_loss=4.5, mmlu=None, final_score=(1 - forget + retain) / 2, collapsed=False,
               wall_seconds=10.0 + seed, peak_memory_mib=None)
    return row


def _inputs():
    from obliviate.studies.demo import summarise

    runs = {"target": [_run("target", 1.0, 1.0, 0)], "oracle": [_run("oracle", 0.1, 0.95, 0)],
            "NPO": [_run("NPO", 0.3 + 0.05 * s, 0.8, s) for s in range(3)]}
    rows = [summarise(name, entries) for name, entries in runs.items()]
    evaluations = {
        "target": {"evaluation": {"mia_losses": {"member": [0.1, 0.2, 0.3], "nonmember": [3.0, 3.5, 4.0]}}},
        "oracle": {"evaluation": {"mia_losses": {"member": [3.1, 3.6, 2.0], "nonmember": [3.0, 3.5, 4.0]}}},
        "NPO@seed0": {"evaluation": {"mia_losses": {"member": [1.0, 2.5, 3.2], "nonmember": [3.0, 3.5, 4.0]}},
                      "record": {"log_history": [{"loss": 2.0, "step": 5}, {"loss": 1.2, "step": 10}]}},
    }
    return rows, runs, evaluations


def test_report_holds_the_table_and_every_plot_as_a_png():
    rows, runs, evaluations = _inputs()
    page = demo_html(rows, runs, evaluations, source="bundled", command="obliviate demo", notes=["a <note>"])
    assert page.count("<tr>") == 1 + len(rows) and "NPO" in page and "0.350 ± 0.050" in page
    assert "a &lt;note&gt;" in page  # escaped, never raw HTML
    for plot in PLOT_IDS:
        match = re.search(rf'<img id="{plot}" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
        assert match, plot
        assert base64.b64decode(match.group(1))[:8] == b"\x89PNG\r\n\x1a\n"


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("OBLIVIATE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required here (OBLIVIATE_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def test_report_renders_in_headless_chromium(tmp_path):
    import matplotlib.image
    import numpy

    chromium = _chromium()
    rows, runs, evaluations = _inputs()
    page = tmp_path / "report.html"
    page.write_text(demo_html(rows, runs, evaluations, source="bundled", command="obliviate demo"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    rendered = re.search(r'data-plots-rendered="(\d+)"', dom.stdout)
    assert rendered and int(rendered.group(1)) == len(PLOT_IDS), dom.stdout[:500]

    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, "--window-size=1200,2600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 2000
    not_white = (pixels < 0.95).any(axis=2)
    assert not_white.mean() > 0.02, "the screenshot is blank"
    # The plots' colours (matplotlib's blue, orange, the oracle's gold star) are on the page, not only black text.
    colours = numpy.unique((pixels[not_white] * 255).astype(int) // 32, axis=0)
    assert len(colours) > 20


def _png(path, colour):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar([0, 1], [0.4, 0.9], color=colour)
    fig.savefig(path)
    plt.close(fig)


MARKDOWN = """# A report with `code`

Data: digits; 2 < 3 & more.

| method | forget acc | H |
|---|---|---|
| laf | 0.002 ± 0.001 | 0.850 |
| retrain | 0.000 ± 0.000 | 0.875 |

![metrics](plot.png)

Total wall time 12 s.
"""


def test_a_markdown_report_becomes_html_with_its_plot_embedded(tmp_path):
    _png(tmp_path / "plot.png", "tab:red")
    page = markdown_report_html(MARKDOWN, tmp_path)
    assert "<h1>A report with <code>code</code></h1>" in page
    assert "<p>Data: digits; 2 &lt; 3 &amp; more.</p>" in page  # escaped, never raw HTML
    assert page.count("<tr>") == 3 and "<th>forget acc</th>" in page and "<td>0.002 ± 0.001</td>" in page
    assert "---" not in page  # the separator row is not a row
    match = re.search(r'<img alt="metrics" src="data:image/png;base64,([^"]+)"', page)
    assert match and base64.b64decode(match.group(1)) == (tmp_path / "plot.png").read_bytes()
    assert "<p>Total wall time 12 s.</p>" in page


def test_a_markdown_report_renders_in_headless_chromium(tmp_path):
    chromium = _chromium()
    _png(tmp_path / "plot.png", "tab:blue")
    page = tmp_path / "report.html"
    page.write_text(markdown_report_html(MARKDOWN, tmp_path))
    (tmp_path / "plot.png").unlink()  # self-contained: nothing is fetched
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    rendered = re.search(r'data-plots-rendered="(\d+)"', dom.stdout)
    assert rendered and int(rendered.group(1)) == 1, dom.stdout[:500]

