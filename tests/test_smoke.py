"""The smoke profile end to end: every notebook, then the offline report checked in a browser.

This is the slowest test (a few minutes on 2 cores): one session-scoped run shared by
the assertions below.
"""
import json

import nbformat
import pandas as pd
import pytest

from geowall import pipeline, report
from geowall.config import load_profile


@pytest.fixture(scope="module")
def full_smoke(tmp_path_factory):
    runs = tmp_path_factory.mktemp("smoke-runs")
    records = pipeline.run("smoke", runs_dir=runs, progress=False)
    return runs / "smoke", records


def test_every_step_ran_and_wrote_its_artefacts(full_smoke):
    run_dir, records = full_smoke
    assert [r["step"] for r in records] == [s.name for s in pipeline.STEPS]
    assert all(r["status"] == "ran" for r in records)
    for name in ("sae_metrics.parquet", "geometry.parquet", "exponents.parquet", "law.parquet", "law_compare.parquet",
                 "transfer.parquet", "floors.parquet", "stage2.nc"):
        assert (run_dir / name).is_file(), name
    metrics = pd.read_parquet(run_dir / "sae_metrics.parquet")
    cfg = load_profile("smoke")
    assert set(metrics.model) == {m.name for m in cfg.models}
    t = pd.read_parquet(run_dir / "transfer.parquet")
    assert len(t) == 2 * len(cfg.transfer) * 3  # both directions x (law, depth, mean)


def test_embed_targets_exist_after_the_run(full_smoke):
    run_dir, _ = full_smoke
    cfg = load_profile("smoke")
    _, body = report._front_matter((report.ROOT / "index.qmd").read_text())
    for nb, label in report.EMBED.findall(body):
        path = report.notebook_source(nb, cfg, run_dir)
        cells = report.labelled_cells(nbformat.read(path, as_version=4))
        assert label in cells and "gw-chart" in cells[label]["html"], (nb, label)


def test_offline_report_renders_charts_in_chromium(full_smoke):
    run_dir, _ = full_smoke
    site = report.build("smoke", runs_dir=run_dir.parent, use_quarto=False, log=lambda *_: None)
    pages = sorted(site.glob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "walkthrough.html", "02_geometry.html", "references.html"}
    paper = (site / "index.html").read_text()
    assert "Zaher" in paper and "n/a (step not run)" not in paper and "{{<" not in paper
    assert "smoke" in paper  # it says which profile produced it
    if report.find_chromium() is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    records = report.browser_check([site / "index.html", site / "02_geometry.html"], run_dir / "screens")
    for r in records:
        assert r["charts"] > 0 and r["drawn"] == r["charts"], r
        assert not r["failed_requests"] and not r["console_errors"], r
    assert (run_dir / "screens" / "index.png").stat().st_size > 10_000
    json.dumps(records)
