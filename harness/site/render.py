"""Pages from the collected sections through Jinja2 templates (package data beside this module),
with the stylesheet and the sorting script copied next to them."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ..provenance import REPO_ROOT
from ..records import write_atomic
from ..paper import glance
from .collect import build_pages, load_specs, rebase

ASSETS = ("site.css", "sort.js")


@dataclass
class Variant:
    name: str
    label: str
    color: str
    paper: str
    code: str
    licence: str
    official_params: str
    params: dict[str, str]
    own_fields: str
    ablation_of: str
    published: list[dict[str, Any]]


def _licence(card: Any) -> str:
    """The card's licence where it has one, else the licence its code link names in parentheses."""
    explicit = getattr(card, "licence", "") or getattr(card, "license", "")
    if explicit:
        return str(explicit)
    code = card.code or ""
    if "(" in code and "licen" in code.lower():
        return code[code.index("(") + 1:].rstrip(")")
    return "not stated on the card"


def variants() -> list[Variant]:
    """Every registered variant, from its card; parameters per preset counted on the meta device."""
    import torch
    from matplotlib.colors import to_hex

    from models import build_model, config_class, list_models, model_card, presets
    out = []
    for name in list_models():
        card = model_card(name)
        params = {}
        for preset in presets(name):
            try:
                with torch.device("meta"):
                    params[preset] = f"{build_model(name, preset).num_parameters():,}"
            except Exception as error:  # a variant that cannot be built at a preset says so instead of stopping the site
                params[preset] = f"n/a ({type(error).__name__})"
        try:
            color = to_hex(card.color)
        except ValueError:
            color = "#888888"
        code = card.code or ""
        if "(" in code and "licen" in code.lower():
            code = code[:code.index("(")].strip()
        published = [{"table": table, "source": entry.source,
                      "numbers": ", ".join(f"{k} {v}" for k, v in entry.values.items())} for table, entry in card.published.items()]
        out.append(Variant(name, card.label, color, card.paper, code, _licence(card),
                           f"{card.official_params:,}" if card.official_params else "n/a", params,
                           ", ".join(config_class(name).own_fields()), card.ablation_of, published))
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.site", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["seed_chart"] = seed_chart
    env.filters["status_word"] = status_word
    env.filters["status_detail"] = status_detail
    env.filters["headline"] = headline
    return env


def status_word(status: str) -> str:
    """The badge of a paper entry's status line."""
    if status.startswith("measured"):
        return "measured"
    if status.startswith("needs"):
        return status.split(":")[0]
    return "not run yet"


def status_detail(status: str) -> str:
    """The rest of a status line after its badge (measured: rows, device, preset, commit)."""
    if status.startswith("measured here: "):
        return status[len("measured here: "):]
    _, _, rest = status.partition(": ")
    return rest if status.startswith("needs") else status


def headline(line: str):
    """A headline line with its published part set apart: from "published" where it starts the line, follows
    "; " or opens a parenthesis (not where it qualifies another word, as in "the inferred published setting")."""
    import re

    from markupsafe import Markup, escape
    found = re.search(r"(?:^|; |\()published\b", line)
    if found is None:
        return escape(line)
    cut = found.start() + (2 if line[found.start()] == ";" else 1 if line[found.start()] == "(" else 0)
    return Markup(f"{escape(line[:cut])}<span class=\"pub\">{escape(line[cut:])}</span>")


SCALE = ("toy scale: models of about 0.2 to 9 M parameters at 32 to 128 px on a CPU, where the papers run 170 to 200 M "
         "parameters at 256 to 512 px on GPUs; compare ratios between variants, growth exponents and orderings, not values")


def page_banner(page: Any) -> str:
    """Where and at what scale a page's numbers were measured, in one line."""
    if page.report is None:
        return "no report.json here yet: rebuild it with `python -m harness run EXPERIMENT.yaml --from-records`"
    return f"{page.setting}. This is {SCALE}."


def index_banner(pages: list[Any]) -> str:
    devices = sorted({p.report.setting.device.name for p in pages if p.report is not None and p.report.setting.device.name})
    return (f"{', '.join(devices) or 'no device recorded'}, float32. Everything here is {SCALE}. Each page's banner names "
            "its own setting.")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text)


def write_site(experiments_dir: Path, results_root: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pages, others, index = build_pages(experiments_dir, results_root, out)
    env = environment()
    nav = [{"slug": p.slug, "name": p.name, "status": p.status_class} for p in pages] \
        + [{"slug": p.slug, "name": p.name, "status": "other"} for p in others]
    common = {"nav": nav, "commit": _commit(), "asset": "assets",
              "readme": Path(os.path.relpath(results_root.resolve() / "README.md", out.resolve())).as_posix()
              if (results_root / "README.md").is_file() else ""}
    page_of_item = {item.number: page for page in pages for item in page.paper}
    cards = variants()
    _write_if_changed(out / "index.html", env.get_template("index.html").render(
        index=index, pages=pages, page_of_item=page_of_item, others=others, variants=cards, current="index",
        glance=glance([rebase(spec, results_root) for spec in load_specs(experiments_dir)]),
        labels={v.name: v.label for v in cards}, colors={v.name: v.color for v in cards},
        banner=index_banner(pages), **common))
    for page in [*pages, *others]:
        _write_if_changed(out / f"{page.slug}.html", env.get_template("experiment.html").render(
            page=page, current=page.slug, banner=page_banner(page), **common))
    # A page whose experiment is gone (renamed or removed) would stay linked from nowhere and out of date.
    written = {"index.html", *(f"{page.slug}.html" for page in [*pages, *others])}
    for stale in out.glob("*.html"):
        if stale.name not in written:
            stale.unlink()
    for name in ASSETS:
        _write_if_changed(out / "assets" / name, resources.files("harness.site").joinpath("assets", name).read_text())
    return out / "index.html"


def seed_chart(training: Any, width: int = 640) -> str:
    """An inline SVG: per arm, its seeds' final PSNR (dots), their range (a bar) and mean (a tick),
    with the camera-ignoring bar as a dashed line."""
    from markupsafe import Markup, escape
    arms = training.arms
    values = [v for arm in arms for v in arm.seeds.values()] + ([training.bar] if training.bar is not None else [])
    low, high = min(values), max(values)
    pad = max((high - low) * 0.08, 0.05)
    low, high = low - pad, high + pad
    left, right, row_h, top = 190, 20, 22, 24
    plot_w = width - left - right
    height = top + row_h * len(arms) + 28

    def x(v: float) -> float:
        return left + (v - low) / (high - low) * plot_w

    parts = [f'<svg class="seed-chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>final validation PSNR per arm: seed range, mean and the '
             f'camera-ignoring bar</title>']
    ticks = 5
    for i in range(ticks + 1):
        v = low + (high - low) * i / ticks
        parts.append(f'<line x1="{x(v):.1f}" y1="{top - 6}" x2="{x(v):.1f}" y2="{height - 22}" class="grid"/>'
                     f'<text x="{x(v):.1f}" y="{height - 8}" class="axis" text-anchor="middle">{v:.2f}</text>')
    for i, arm in enumerate(arms):
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" class="label" text-anchor="end">{escape(arm.name)}</text>')
        parts.append(f'<line x1="{x(arm.low):.1f}" y1="{y:.1f}" x2="{x(arm.high):.1f}" y2="{y:.1f}" class="range"/>')
        for seed, v in sorted(arm.seeds.items()):
            parts.append(f'<circle cx="{x(v):.1f}" cy="{y:.1f}" r="4" class="seed"><title>{escape(arm.name)} seed {seed}: '
                         f'{v:.2f} dB</title></circle>')
        parts.append(f'<line x1="{x(arm.mean):.1f}" y1="{y - 7:.1f}" x2="{x(arm.mean):.1f}" y2="{y + 7:.1f}" class="mean"/>')
    if training.bar is not None:
        parts.append(f'<line x1="{x(training.bar):.1f}" y1="{top - 10}" x2="{x(training.bar):.1f}" y2="{height - 22}" class="bar"/>'
                     f'<text x="{x(training.bar) + 4:.1f}" y="{top - 12}" class="bar-label">camera-ignoring bar '
                     f'({escape(training.bar_name)}, {training.bar:.2f} dB)</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
