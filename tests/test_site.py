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
import pytest
from PIL import Image

from harness.site import build_site
from harness.site.compare import Difference, column_pairs, difference, span
from models import list_models, model_card

REPO = Path(__file__).resolve().parent.parent
PROVENANCE_LABELS = ("device", "dtype", "preset", "data", "protocol", "commit", "world size")


# ------------------------------------------------------------------------------------ fixture


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table(folder: Path, stem: str, title: str, header: str, lines: list[str], notes: tuple[str, ...] = ("measured: cpu: test",)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.csv").write_text("\n".join([header, *lines]) + "\n")
    (folder / f"{stem}.md").write_text(f"# {title}\n\n" + "".join(f"- {n}\n" for n in notes) + "\n| table |\n")
    (folder / f"{stem}.tex").write_text("% " + title + "\n")


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


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    """(experiments folder, results folder): four of the repository's experiment YAMLs and what they
    would have recorded, in miniature, plus a results folder no experiment claims."""
    root = tmp_path_factory.mktemp("recorded")
    experiments, results = root / "experiments", root / "results"
    experiments.mkdir()
    for name in ("efficiency_table", "convergence", "ablations", "eval_synthetic"):
        shutil.copy(REPO / "experiments" / f"{name}.yaml", experiments)

    eff = results / "efficiency_table"
    _table(eff, "efficiency_table", "Efficiency: ours beside the published table",
           "model,params M (ours),params M (published),latency ms (ours),IQR ms,noisy,latency ms (published)",
           ["LVSM decoder-only,5.0,177.0,23.5,5.7,,109.37", "Efficient-LVSM,5.8,199.0,17.0,9.0,noisy,24.78",
            "pixelSplat,n/a,125.0,n/a,n/a,n/a,50.52"])
    _jsonl(eff / "rows.jsonl", [_row("a", model="lvsm_decoder_only", preset="small"), _row("b", model="efficient_lvsm", preset="small"),
                                _row("c", model="lvsm_encoder_decoder", preset="small", status="error", error="RuntimeError: boom")])
    (eff / "manifest.json").write_text(json.dumps({"commit": "abc1234567", "device": "cpu: test (1 thread)", "dtype": "float32",
                                                   "preset": "small", "experiment": {"measure": {"runs": 30, "warmup": 5}}}))
    (eff / "headlines.md").write_text("- ours: latency 1.38x\n- published: latency 4.41x\n")
    _png(eff / "cost.png")

    abl = results / "ablations"
    finals = [("co_refinement", "efficient_lvsm", 0, 22.6), ("co_refinement", "efficient_lvsm", 1, 22.9),
              ("final_context", "efficient_lvsm_final_context", 0, 22.40), ("final_context", "efficient_lvsm_final_context", 1, 22.45)]
    _jsonl(abl / "rows.jsonl", [_row("p", predictors={"blurred_mean": {"psnr": 21.8}, "context_mean": {"psnr": 21.5}})]
           + [_row(f"f{i}", arm=arm, model=model, seed=seed, final_psnr=psnr, world_size=1)
              for i, (arm, model, seed, psnr) in enumerate(finals)])
    _table(abl, "summary", "ablations: one row per arm",
           "arm,variant,seeds,psnr_mean,psnr_min,psnr_max,diff_vs_reference_db,significance,published,published_source",
           ["co_refinement,efficient_lvsm,2,22.75,22.6,22.9,n/a,reference,n/a,n/a",
            'final_context,efficient_lvsm_final_context,2,22.425,22.40,22.45,-0.325,exceeds seed range,-1.3 to -2,"paper, ablation"'])
    for name in ("psnr_vs_step.png", "psnr_vs_seconds.png", "renders_co_refinement.png"):
        _png(abl / name)
    (abl / "manifest.json").write_text(json.dumps({"commit": "abc1234567", "world_size": 1, "experiment": {"preset": "small"}}))
    (abl / "headlines.md").write_text("- final_context: PSNR 22.43 dB, -0.33 dB vs co_refinement; published -1.3 to -2 (paper)\n")

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
    _table(ev, "summary", "eval: image quality", "model,weights,psnr,ssim,source",
           ["lvsm_decoder_only,checkpoint,21.5,0.5,measured", "lvsm_decoder_only,published,29.67,0.906,published: paper"])

    _table(results / "extra", "extra", "A study of its own", "variant,ms", ["a,1.5", "b,2.5"])
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


def test_published_beside_ours_with_signed_difference(site):
    eff = _page(site, "efficiency_table")
    assert "Δ latency ms (ours)" in eff
    # 23.5 - 109.37 and 17.0 - 24.78: ours below the published, coloured as negative
    assert re.search(r'<td class="num diff neg" data-sort="-85\.87[0-9]*">-85\.87</td>', eff)
    assert re.search(r'<td class="num diff neg" data-sort="-7\.78[0-9]*">-7\.78</td>', eff)
    abl = _page(site, "ablations")
    # the arm's published value is a difference to the reference (-1.3 to -2 dB); ours is -0.325 dB
    assert re.search(r'<td class="num diff pos" data-sort="0\.975[0-9]*">\+0\.975 to \+1\.675</td>', abl)
    compared = abl[abl.index('id="compared"'):abl.index('id="training"')]  # the pairs again, at the top of the page
    assert "final_context" in compared and "diff_vs_reference_db" in compared and "+0.975 to +1.675" in compared
    ev = _page(site, "eval")
    assert "Δ psnr" in ev and re.search(r'class="num diff neg" data-sort="-8\.17[0-9]*">-8\.17<', ev)


def test_noisy_and_failed_points_are_marked(site):
    eff = _page(site, "efficiency_table")
    assert '<tr class="noisy">' in eff and '<span class="badge noisy">noisy</span> Efficient-LVSM' in eff
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


# ------------------------------------------------------------------------------------ compare


def test_published_ranges_and_column_conventions():
    assert span("-1.3 to -2") == (-2.0, -1.3) and span(0.8) == (0.8, 0.8) and span("n/a") is None
    assert difference(-0.3, "-1.3 to -2") == Difference(1.0, 1.7) and difference(-0.3, "-1.3 to -2").sign == "pos"
    assert difference("1.0", "0.5 to 2").sign == "mixed" and difference(None, 1) is None
    pairs = column_pairs(["model", "params M (ours)", "params M (published)", "GFLOPs (ours, 2xMAC)", "GFLOPs (published, thop)",
                          "cached ms", "published cached ms", "psnr_mean", "published_psnr"])
    assert {(p.ours, p.published) for p in pairs} == {("params M (ours)", "params M (published)"),
                                                      ("cached ms", "published cached ms"), ("psnr_mean", "published_psnr")}


# ------------------------------------------------------------------------------------ browser


@pytest.mark.slow
def test_in_headless_chromium_sorting_links_images_and_a_screenshot(site, tmp_path):
    from harness.site.browser import broken_references, chromium, missing, screenshot
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
        shot = screenshot(driver, site / "index.html", tmp_path / "index.png")
        assert Image.open(shot).size[0] >= 1000


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
