"""The results site: pages built from a small recorded results folder (rows, manifests, tables, plots,
an evaluation's grid), published numbers beside ours with the signed difference, noisy and failed
points marked, valid HTML whose every link and image resolves; then the same in headless Chromium
(sorting by a clicked header), and the committed results/ building without error."""
from __future__ import annotations

import html.parser
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.report import Fact, ReportData, Setting, TableData, read_report, table_data, write_report_json, write_table_files
from harness.site import build_site
from models import list_models, model_card

REPO = Path(__file__).resolve().parent.parent
PROVENANCE_LABELS = ("setting", "device", "dtype", "protocol", "commit", "world size")


# ------------------------------------------------------------------------------------ fixture


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


CPU = Setting.model_validate({"device": {"name": "cpu: test (1 thread)", "threads": 1, "dtype": "float32"},
                              "model": {"preset": "small", "dim": 256, "depth": "6", "image_size": 64, "patch_size": 8},
                              "views": {"n_input": 6, "n_target": 7}, "counting": "thop (linear layers)"})
GPU = Setting.model_validate({"device": {"name": "GPU (model not stated)"}, "model": {"preset": "paper"},
                              "counting": "thop (linear layers)"})


def _report(folder: Path, experiment: str, kind: str, tables: list[TableData], setting: Setting = CPU, **fields) -> ReportData:
    """What a kind writes: report.json and each table's .md/.csv/.tex rendered from it."""
    folder.mkdir(parents=True, exist_ok=True)
    report = ReportData(experiment=experiment, kind=kind, title=experiment, setting=setting, tables=tables,
                        commit="abc1234567", **fields)
    for table in tables:
        write_table_files(table, folder)
    write_report_json(report, folder)
    return report


def _png(path: Path, pixels: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels if pixels is not None else np.full((20, 30, 3), 90, np.uint8)).save(path)


def _grid(path: Path, scenes: int, columns: int) -> None:
    """A figure laid out as the evaluation's grid: white, one band of grey panels per scene."""
    panel, gap = 40, 10
    image = np.full((30 + scenes * (panel + gap), 20 + columns * (panel + gap), 3), 255, np.uint8)
    for r in range(scenes):
        for c in range(columns):
            top, left = 30 + r * (panel + gap), 20 + c * (panel + gap)
            image[top:top + panel, left:left + panel] = 60 + 40 * c % 190
    _png(path, image)


def _row(key: str, **values) -> dict:
    return {"key": key, "version": "src-test", "status": "ok", "error": None, "commit": "abc1234567", "device": "cpu: test (1 thread)",
            "dtype": "float32", **values}


def efficiency_tables() -> list[TableData]:
    """The efficiency table (ours on a CPU beside a GPU's published numbers: never subtracted) and a count at
    the published setting (the same setting on both sides: subtracted, coloured by better or worse)."""
    frame = pd.DataFrame({"model": ["LVSM decoder-only", "Efficient-LVSM", "pixelSplat"], "params M (ours)": [5.0, 5.8, None],
                          "params M (published)": [177.0, 199.0, 125.0], "latency ms (ours)": [23.5, 17.0, None],
                          "IQR ms": [5.7, 9.0, None], "noisy": ["", "noisy", ""], "latency ms (published)": [109.37, 24.78, 50.52],
                          "latency / LVSM decoder-only (ours)": [1.0, 17.0 / 23.5, None],
                          "latency / LVSM decoder-only (published)": [1.0, 24.78 / 109.37, 50.52 / 109.37]})
    published = {"role": "published", "setting": "published"}
    mismatched = table_data("efficiency_table", "Efficiency: ours beside the published table", frame, ["measured: cpu: test"],
                            columns={"params M (published)": published, "latency ms (published)": published,
                                     "latency / LVSM decoder-only (published)": {"role": "ratio", "setting": "published"},
                                     "latency / LVSM decoder-only (ours)": {"role": "ratio"}},
                            settings={"ours": CPU, "published": GPU},
                            compare=[("params M (ours)", "params M (published)"), ("latency ms (ours)", "latency ms (published)")],
                            status=["ok", "noisy", "published"])
    same = CPU.model_copy(update={"device": GPU.device})
    counted = table_data("flops_at_published_setting", "FLOPs at the published setting",
                         pd.DataFrame({"model": ["LVSM decoder-only", "Efficient-LVSM"], "thop GMACs (ours)": [8529.0, 1300.0],
                                       "published GFLOPs (thop)": [8523.0, 1325.0]}),
                         columns={"published GFLOPs (thop)": {"role": "published", "setting": "published", "quantity": "flops"}},
                         settings={"ours": same, "published": same}, compare=[("thop GMACs (ours)", "published GFLOPs (thop)")])
    return [mismatched, counted]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    """(experiments folder, results folder): five of the repository's experiment YAMLs and what they
    would have recorded, in miniature (rows and report.json), plus a results folder no experiment claims."""
    root = tmp_path_factory.mktemp("recorded")
    experiments, results = root / "experiments", root / "results"
    experiments.mkdir()
    for name in ("efficiency_table", "convergence", "ablations", "eval_synthetic", "bench", "speed_vs_views"):
        shutil.copy(REPO / "experiments" / f"{name}.yaml", experiments)

    eff = results / "efficiency_table"
    _jsonl(eff / "rows.jsonl", [_row("a", model="lvsm_decoder_only", preset="small"), _row("b", model="efficient_lvsm", preset="small"),
                                _row("c", model="lvsm_encoder_decoder", preset="small", status="error", error="RuntimeError: boom")])
    (eff / "manifest.json").write_text(json.dumps({"commit": "abc1234567", "device": "cpu: test (1 thread)", "dtype": "float32",
                                                   "preset": "small", "experiment": {"measure": {"runs": 30, "warmup": 5}}}))
    _report(eff, "efficiency_table", "profile_efficiency", efficiency_tables(),
            headlines=["ours: latency 1.38x", "published: latency 4.41x"])
    _png(eff / "cost.png")

    bench = results / "bench"
    _jsonl(bench / "rows.jsonl", [_row("d", model="lvsm_decoder_only", n_input=2, n_target=1)])
    frame = pd.DataFrame({"model": ["LVSM decoder-only", "Efficient-LVSM"], "N": [2, 2], "M": [1, 1], "latency ms (median)": [30.0, 20.0]})
    _report(bench, "bench", "profile", [table_data("bench", "bench: cost", frame)],
            facts=[Fact(variant=name, quantity="speed-up over LVSM decoder-only, N=2, M=1", value=30.0 / ms, unit="x", better="higher",
                        table="bench", row=i) for i, (name, ms) in enumerate([("lvsm_decoder_only", 30.0), ("efficient_lvsm", 20.0)])])

    abl = results / "ablations"
    finals = [("co_refinement", "efficient_lvsm", 0, 22.6), ("co_refinement", "efficient_lvsm", 1, 22.9),
              ("final_context", "efficient_lvsm_final_context", 0, 22.40), ("final_context", "efficient_lvsm_final_context", 1, 22.45)]
    _jsonl(abl / "rows.jsonl", [_row("p", predictors={"blurred_mean": {"psnr": 21.8}, "context_mean": {"psnr": 21.5}})]
           + [_row(f"f{i}", arm=arm, model=model, seed=seed, final_psnr=psnr, world_size=1)
              for i, (arm, model, seed, psnr) in enumerate(finals)])
    summary = pd.DataFrame({"arm": ["co_refinement", "final_context"], "variant": ["efficient_lvsm", "efficient_lvsm_final_context"],
                            "seeds": [2, 2], "psnr_mean": [22.75, 22.425], "diff_vs_reference_db": [None, -0.325],
                            "published": [None, "-1.3 to -2"]})
    _report(abl, "ablations", "convergence",
            [table_data("summary", "ablations: one row per arm", summary,
                        columns={"published": {"role": "published", "quantity": "psnr difference", "setting": "published"}},
                        settings={"published": Setting(note="the paper's own scale")})],
            headlines=["final_context: PSNR 22.43 dB, -0.33 dB vs co_refinement; published -1.3 to -2 (paper)"],
            not_run=["arm repa skipped: REPA teacher weights not found"])
    for name in ("psnr_vs_step.png", "psnr_vs_seconds.png", "renders_co_refinement.png"):
        _png(abl / name)
    (abl / "manifest.json").write_text(json.dumps({"commit": "abc1234567", "world_size": 1, "experiment": {"preset": "small"}}))

    ev = results / "eval"
    scenes = [f"scene_{i}" for i in range(4)]
    rows = [_row(f"{m}{s}", model=m, scene=s, psnr=20.0 + i + 0.5 * j, ssim=0.5, lpips=None, targets=1,
                 views={"context": [0, 1], "target": [2]}) for j, m in enumerate(("lvsm_decoder_only", "efficient_lvsm"))
            for i, s in enumerate(scenes)]
    rows[-1].update(status="error", error="ValueError: bad scene", psnr=None)
    _jsonl(ev / "rows.jsonl", rows)
    (ev / "manifest.json").write_text(json.dumps({"commit": "abc1234567",
                                                  "experiment": {"grid_scenes": 3, "data": {"source": "synthetic_object"}}}))
    _grid(ev / "grid.png", scenes=3, columns=5)
    _report(ev, "eval", "evaluate", [table_data("summary", "eval: image quality", pd.DataFrame(
        {"model": ["lvsm_decoder_only", "lvsm_decoder_only"], "psnr": [21.5, 29.67], "setting": ["ours", "published 1"]}),
        columns={"setting": {"role": "setting"}})], not_run=["LPIPS: n/a in every row. backbone missing"])

    _report(results / "extra", "extra", "", [table_data("extra", "A study of its own", pd.DataFrame({"variant": ["a", "b"],
                                                                                                   "ms": [1.5, 2.5]}))])
    return experiments, results


@pytest.fixture(scope="module")
def site(recorded) -> Path:
    experiments, results = recorded
    return build_site(experiments, results).parent


def _page(site: Path, name: str) -> str:
    return (site / f"{name}.html").read_text()


# -------------------------------------------------------------------------------------- pages


def test_every_experiment_and_unclaimed_folder_gets_a_page_and_the_index_links_them(site):
    index = _page(site, "index")
    for page in ("efficiency_table", "convergence", "ablations", "eval", "extra"):
        assert (site / f"{page}.html").is_file()
        assert f'href="{page}.html"' in index
    assert "Efficiency table: parameters, latency, GFLOPs" in index and "make efficiency-table" in index
    assert "not run yet" in index  # convergence: a YAML without recorded rows
    for name in list_models():  # the variants come from the registry, each with its card
        assert f'id="variant-{name}"' in index and model_card(name).label in index


def test_a_difference_only_where_the_settings_match_coloured_by_better_or_worse(site, recorded):
    eff = _page(site, "efficiency_table")
    table = eff[eff.index('id="table-efficiency_table"'):eff.index('id="table-flops_at_published_setting"')]
    # CPU beside GPU: both numbers shown, no difference column, and the fields that differ said on the page
    assert "109.4" in table and "23.5" in table and "− published" not in table
    assert "num better" not in table and "num worse" not in table
    assert "are not subtracted: the settings differ" in table and "device.name (ours cpu: test (1 thread), published GPU" in table
    # the same setting on both sides: ours − published, and FLOPs are lower-better (more is worse)
    counted = eff[eff.index('id="table-flops_at_published_setting"'):]
    assert "thop GMACs (ours) − published" in counted
    assert re.search(r'<td class="num worse" data-sort="6\.0">\+6</td>', counted)
    assert re.search(r'<td class="num better" data-sort="-25\.0">-25</td>', counted)
    report = read_report(recorded[1] / "efficiency_table" / "report.json")
    assert [c.difference for c in report.tables[0].comparisons] == [None, None]
    assert report.tables[1].comparisons[0].difference == "thop GMACs (ours) − published"
    # a published value of a paper's own scale beside a training study's: shown, never subtracted
    abl = _page(site, "ablations")
    summary = abl[abl.index('id="table-summary"'):]
    assert "-1.3 to -2" in summary and "− published</button>" not in summary and "num better" not in summary


def test_differing_names_each_field_that_keeps_two_numbers_apart():
    from harness.report import add_comparison, differing
    assert differing("latency", CPU, CPU) == []
    fields = differing("latency", CPU, GPU)
    assert any(f.startswith("device.name") for f in fields) and any(f.startswith("views.n_input") for f in fields)
    # FLOPs do not depend on the device, latency does
    on_gpu = CPU.model_copy(update={"device": GPU.device})
    assert differing("flops", CPU, on_gpu) == [] and differing("latency", CPU, on_gpu) != []
    # what a source does not state never matches
    unstated = CPU.model_copy(update={"views": CPU.views.model_copy(update={"n_target": None})})
    assert differing("flops", CPU, unstated) == ["views.n_target (ours 7, published not stated)"]
    assert differing("ratio", CPU, CPU) != []  # a ratio is compared as a ratio, never subtracted
    table = table_data("t", "t", pd.DataFrame({"ms (ours)": [10.0], "ms (published)": [12.0]}),
                       columns={"ms (published)": {"role": "published", "setting": "published", "quantity": "latency"}},
                       settings={"ours": CPU, "published": CPU})
    comparison = add_comparison(table, "ms (ours)", "ms (published)")
    assert comparison.difference and table.rows[0][comparison.difference] == -2.0
    assert table.column(comparison.difference).better == "lower"


def test_noisy_and_failed_points_are_marked(site):
    eff = _page(site, "efficiency_table")
    assert re.search(r'<tr id="[^"]+" class="noisy">', eff) and '<span class="badge noisy">noisy</span> Efficient-LVSM' in eff
    assert "RuntimeError: boom" in eff and "model=lvsm_encoder_decoder" in eff
    assert "ValueError: bad scene" in _page(site, "eval")


def test_provenance_block_on_every_experiment_page(site):
    eff = _page(site, "efficiency_table")
    block = eff[eff.index('id="provenance"'):]
    for label in PROVENANCE_LABELS:
        assert f"<dt>{label}</dt>" in block
    assert "cpu: test (1 thread)" in block and "abc1234567" in block and "runs=30" in block
    assert "<dt>world size</dt><dd>1</dd>" in _page(site, "ablations")


def test_training_study_shows_seed_ranges_the_bar_and_both_curves(site):
    abl = _page(site, "ablations")
    assert "camera-ignoring bar (blurred_mean, 21.80 dB)" in abl
    assert "co_refinement seed 1: 22.90 dB" in abl and "final_context seed 0: 22.40 dB" in abl
    assert "psnr_vs_step.png" in abl and "psnr_vs_seconds.png" in abl and "renders_co_refinement.png" in abl


def test_evaluation_per_scene_table_and_one_strip_per_recorded_scene(site, recorded):
    ev = _page(site, "eval")
    for scene in ("scene_0", "scene_1", "scene_2", "scene_3"):
        assert f'data-sort="{scene}"' in ev
    strips = sorted((site / "scenes" / "eval").glob("*.png"))
    assert [p.stem for p in strips] == ["scene_0", "scene_1", "scene_2"]
    grid = Image.open(recorded[1] / "eval" / "grid.png")
    for path in strips:  # each strip is one band of panels of the grid, from its first panel on
        strip = Image.open(path)
        assert 40 <= strip.height <= 46 and strip.width < grid.width
    assert "input 1 · input 2 · ground truth (first target) · lvsm_decoder_only · efficient_lvsm" in ev
    assert 'href="#scene-scene_0"' in ev and 'href="#scene-scene_3"' not in ev  # a scene links to its strip where it has one


def test_raw_rows_csv_and_latex_are_linked(site):
    eff = _page(site, "efficiency_table")
    for href in ("../efficiency_table/rows.jsonl", "../efficiency_table/efficiency_table.csv", "../efficiency_table/efficiency_table.tex",
                 "../efficiency_table/manifest.json"):
        assert f'href="{href}"' in eff


class _Checker(html.parser.HTMLParser):
    """Balanced non-void elements, unique ids, and every local reference."""
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.ids, self.refs, self.problems = [], set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            if attrs["id"] in self.ids:
                self.problems.append(f"duplicate id {attrs['id']}")
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.refs.append(attrs[key])
        if tag not in self.VOID and self.stack is not None:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def _check_html(page: Path) -> list[str]:
    text = page.read_text()
    checker = _Checker()
    checker.feed(text)
    problems = list(checker.problems) + [f"unclosed <{t}>" for t in checker.stack]
    if not text.startswith("<!DOCTYPE html>\n<html lang="):
        problems.append("no HTML5 doctype and language")
    for ref in checker.refs:
        if ref.startswith("#"):
            if ref[1:] not in checker.ids:
                problems.append(f"no anchor {ref}")
        elif "://" in ref or ref.startswith("//"):
            problems.append(f"not local: {ref}")
        elif not (page.parent / ref.split("#")[0]).is_file():
            problems.append(f"missing: {ref}")
    return problems


def test_pages_are_html5_without_a_parse_error_and_with_only_local_references(site):
    pages = sorted(site.glob("*.html"))
    for page in pages:
        assert _check_html(page) == [], page.name
    html5lib = pytest.importorskip("html5lib", reason="html5lib (dev extra) checks HTML5 parse errors")
    for page in pages:
        html5lib.HTMLParser(strict=True).parse(page.read_text())  # raises at the first parse error


def test_rebuilding_from_the_same_records_rewrites_no_file(site, recorded):
    before = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    build_site(*recorded)
    assert [p.name for p, t in before.items() if p.stat().st_mtime_ns != t] == []


def test_a_page_whose_experiment_is_gone_is_removed_on_rebuild(site, recorded):
    (site / "removed_study.html").write_text("<!DOCTYPE html><title>gone</title>")
    build_site(*recorded)
    assert not (site / "removed_study.html").exists()
    assert (site / "index.html").is_file() and (site / "eval.html").is_file()


# ------------------------------------------------------------------------------------ banner


def test_every_page_says_where_and_at_what_scale_it_was_measured(site):
    for page in ("index", "efficiency_table", "ablations", "eval", "bench"):
        text = _page(site, page)
        assert 'id="banner"' in text and "toy scale" in text, page
    assert "cpu: test (1 thread), float32" in _page(site, "efficiency_table")
    index = _page(site, "index")
    glance = index[index.index('id="at-a-glance"'):index.index('id="paper-index"')]
    assert "speed-up over LVSM decoder-only, N=2, M=1" in glance and 'href="bench.html#table-bench-row-1">1.50x</a>' in glance
    ablations = _page(site, "ablations")
    assert "Asked for, not run" in ablations and "arm repa skipped" in ablations
    assert "LPIPS: n/a in every row" in _page(site, "eval")


# ------------------------------------------------------------------------------------ browser


@pytest.mark.slow
def test_in_headless_chromium_sorting_links_images_and_a_screenshot(site, tmp_path):
    from harness.site.browser import WINDOW, broken_references, chromium, missing, screenshot
    if missing():
        pytest.skip(f"headless browser unavailable: {missing()}")
    from selenium.webdriver.common.by import By
    with chromium() as driver:
        for name in ("index", "ablations", "efficiency_table"):
            driver.get((site / f"{name}.html").resolve().as_uri())
            assert broken_references(driver) == [], name
        table = driver.find_element(By.CSS_SELECTOR, "#table-efficiency_table table")

        def first_cells():
            return [row.find_elements(By.TAG_NAME, "td")[0].get_attribute("data-sort")
                    for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        before = first_cells()
        header = table.find_element(By.XPATH, ".//th[button='latency ms (published)']")
        header.find_element(By.TAG_NAME, "button").click()
        assert header.get_attribute("aria-sort") == "ascending"
        assert first_cells() == ["Efficient-LVSM", "pixelSplat", "LVSM decoder-only"] != before  # 24.78 < 50.52 < 109.37
        header.find_element(By.TAG_NAME, "button").click()
        assert first_cells() == ["LVSM decoder-only", "pixelSplat", "Efficient-LVSM"]
        # a difference column only where report.json says the settings match, whatever the page
        for name in ("efficiency_table", "ablations"):
            driver.get((site / f"{name}.html").resolve().as_uri())
            headers = {th.text for th in driver.find_elements(By.CSS_SELECTOR, "th")}
            for table in read_report(site.parent / name / "report.json").tables:  # the site sits in results/site
                for comparison in table.comparisons:
                    name_of_difference = f"{comparison.ours} − published"
                    assert (name_of_difference in headers) == (comparison.differs == []), (name, comparison)
        shot = screenshot(driver, site / "index.html", tmp_path / "index.png")
        assert Image.open(shot).size == WINDOW
        # the one-screen comparison is seen before scrolling at 1400x900
        box = driver.execute_script("const r = document.getElementById('at-a-glance').getBoundingClientRect(); "
                                    "return [r.top, r.bottom, window.innerHeight];")
        assert 0 <= box[0] and box[1] <= box[2] == WINDOW[1]


@pytest.mark.slow
def test_the_committed_results_build(tmp_path, capsys):
    from harness.cli import main
    out = tmp_path / "site"
    assert main(["site", "--experiments", str(REPO / "experiments"), "--results", str(REPO / "results"), "--out", str(out)]) == 0
    index = tmp_path / "site" / "index.html"
    assert capsys.readouterr().out.strip() == f"site: wrote {index}"
    pages = {p.stem for p in index.parent.glob("*.html")}
    from harness.site.collect import load_specs
    assert {"index"} | {spec.name for spec in load_specs(REPO / "experiments")} <= pages
    for page in ("index.html", "ablations.html", "eval.html"):
        assert _check_html(index.parent / page) == [], page


def test_a_headline_sets_apart_its_published_part_only():
    from harness.site.render import headline
    assert str(headline("ours 6.44x (published 6.43x)")) == 'ours 6.44x (<span class="pub">published 6.43x)</span>'
    assert str(headline("a; published 2x")) == 'a; <span class="pub">published 2x</span>'
    assert str(headline("inferred published setting: N=6")) == "inferred published setting: N=6"
