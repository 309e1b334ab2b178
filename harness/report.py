"""Results as data: the `report.json` every experiment writes, and everything rendered from it.

A report is what one experiment says: its tables, with typed columns (the quantity, its unit, whether
higher or lower is better, and the column's role: a label, a setting, our number, a published one, a
ratio, or a difference), and the **setting** of every group of numbers (device, model size, views,
data, counting, training budget, world). The Markdown, CSV and LaTeX tables, the paper index
(`results/README.md`) and the site are all rendered from these files; nothing reads a table back from
its Markdown.

A difference between our number and a published one exists only where the settings that matter for
that quantity match (`differing`): FLOPs need the same model size, resolution, views and counting;
latency and memory also the same device and dtype; PSNR, SSIM and LPIPS also the same data, protocol
and training. Anything a published source does not state counts as not matching. Otherwise the table
keeps both numbers side by side, records the comparison as not comparable with the fields that
differ, and the reader compares what carries over (ratios, exponents, orderings).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tabulate import tabulate

from .errors import ConfigError
from .records import write_atomic
from .tables import markdown, missing_as_none

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
NOT_STATED = "not stated"

Role = Literal["label", "setting", "ours", "published", "ratio", "difference", "note"]
Better = Literal["higher", "lower"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------- settings


class Device(_Strict):
    name: str | None = None  # "cpu: AMD EPYC (2 threads)", "NVIDIA H100", "GPU" (a source that names no model)
    threads: int | None = None
    dtype: str | None = None


class ModelSize(_Strict):
    preset: str | None = None
    params_m: float | None = None  # one model's parameters, in millions; None where the variants differ
    dim: int | None = None
    depth: str | None = None  # "24" or "12+12": the variants name their depths differently
    image_size: int | None = None
    patch_size: int | None = None


class Views(_Strict):
    n_input: int | None = None  # None: varies by row (a setting column says it) or not stated
    n_target: int | None = None


class Data(_Strict):
    source: str | None = None
    protocol: str | None = None
    scenes: int | None = None


class Budget(_Strict):
    steps: int | None = None
    batch: int | None = None
    seeds: list[int] = []


class Setting(_Strict):
    """Where a group of numbers comes from. A field left None is not stated (published) or varies by row
    (ours: a `setting` column of the table carries it)."""
    device: Device = Device()
    model: ModelSize = ModelSize()
    views: Views = Views()
    data: Data = Data()
    counting: str | None = None  # "thop (linear layers)", "all matmuls (FlopCounterMode)"
    training: Budget = Budget()
    world_size: int | None = None
    note: str = ""  # e.g. "view setting inferred from FLOPs, not stated by the source"

    def value(self, path: str) -> Any:
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def describe(self) -> str:
        """One line: device, dtype, threads; model size and resolution; views; data; training."""
        d, m = self.device, self.model
        device = ", ".join(filter(None, [d.name, d.dtype, f"{d.threads} thread{'s' * (d.threads != 1)}" if d.threads else ""]))
        size = ", ".join(filter(None, [
            f"preset {m.preset}" if m.preset else "", f"{m.params_m:.3g} M parameters" if m.params_m else "",
            f"dim {m.dim}" if m.dim else "", f"depth {m.depth}" if m.depth else "",
            f"{m.image_size} px" if m.image_size else "", f"patch {m.patch_size}" if m.patch_size else ""]))
        views = ", ".join(filter(None, [f"N={self.views.n_input}" if self.views.n_input else "",
                                        f"M={self.views.n_target}" if self.views.n_target else ""]))
        data = ", ".join(filter(None, [self.data.source, self.data.protocol,
                                       f"{self.data.scenes} scenes" if self.data.scenes else ""]))
        t = self.training
        budget = ", ".join(filter(None, [f"{t.steps} steps" if t.steps else "", f"batch {t.batch}" if t.batch else "",
                                         f"seeds {', '.join(map(str, t.seeds))}" if t.seeds else ""]))
        parts = [device, size, views, data, f"counting: {self.counting}" if self.counting else "",
                 f"training: {budget}" if budget else "", f"world size {self.world_size}" if self.world_size else "",
                 self.note]
        return "; ".join(p for p in parts if p) or NOT_STATED


def _one(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    """The value every row shares for `key`, else None (it varies, or no row has it)."""
    values = {json.dumps(r[key], sort_keys=True, default=str): r[key] for r in rows if r.get(key) is not None}
    return next(iter(values.values())) if len(values) == 1 else None


def measured_setting(rows: Sequence[Mapping[str, Any]], **given: Any) -> Setting:
    """The setting the `ok` rows share (device, threads, dtype, preset, the sizes every measured config
    shares, views, world size), with the fields of `given` sections laid over it (a None given says "not
    this": e.g. no dtype for a count on the meta device)."""
    ok = [r for r in rows if r.get("status", "ok") == "ok" and "key" in r] or list(rows)
    # A row's `config` is the measured variant's config, or one config per variant of a pair (name -> config).
    sizes = shared_sizes(c for r in ok if isinstance(r.get("config"), Mapping)
                         for c in ([r["config"]] if "dim" in r["config"] else r["config"].values()) if isinstance(c, Mapping))
    params = _one(ok, "params")
    setting: dict[str, Any] = {
        "device": {"name": _one(ok, "device"), "threads": _one(ok, "threads"), "dtype": _one(ok, "dtype")},
        "model": {"preset": _one(ok, "preset"), **sizes, "image_size": sizes["image_size"] or _one(ok, "image_size"),
                  "params_m": params / 1e6 if isinstance(params, (int, float)) else None},
        "views": {"n_input": _one(ok, "n_input"), "n_target": _one(ok, "n_target")},
        "world_size": _one(ok, "world_size"),
    }
    for section, values in given.items():  # what the kind knows wins over what the rows share, None included
        if isinstance(values, Mapping) and isinstance(setting.get(section), dict):
            setting[section].update(values)
        else:
            setting[section] = values
    return Setting.model_validate(setting)


def shared_sizes(configs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The width, resolution and patch every config shares (None where they differ or none is given)."""
    configs = list(configs)
    out = {}
    for field in ("dim", "image_size", "patch_size"):
        values = {c.get(field) for c in configs}
        out[field] = values.pop() if len(values) == 1 else None
    return out


def preset_setting(rows: Sequence[Mapping[str, Any]], preset: str, overrides: Mapping[str, Any], models: Sequence[str]) -> Setting:
    """The setting of rows measured at one preset (with overrides) for every model: the preset's shared sizes."""
    from models import model_config
    return measured_setting(rows, model={"preset": preset, **shared_sizes(model_config(name, preset, **overrides).to_dict()
                                                                          for name in models)})


# Which fields of a setting must match for a difference of a quantity to mean something.
_MODEL = ("model.dim", "model.depth", "model.image_size", "model.patch_size")
_VIEWS = ("views.n_input", "views.n_target")
MATTERS: dict[str, tuple[str, ...]] = {
    "params": ("model.dim", "model.depth", "model.patch_size"),
    "flops": (*_MODEL, *_VIEWS, "counting"),
    "latency": (*_MODEL, *_VIEWS, "device.name", "device.dtype"),
    "memory": (*_MODEL, *_VIEWS, "device.name", "device.dtype"),
    "quality": (*_MODEL, *_VIEWS, "data.source", "data.protocol", "training.steps", "training.batch"),
}


def differing(quantity: str | None, ours: Setting, published: Setting) -> list[str]:
    """The fields that keep `ours - published` of `quantity` from meaning anything: each one as
    `field (ours X, published Y)`; empty when the two may be subtracted. A quantity of no known family
    is never subtracted."""
    family = QUANTITIES.get(quantity or "", {}).get("family")
    if family not in MATTERS:
        return [f"quantity {quantity or 'unnamed'} (no like-for-like rule)"]
    out = []
    for path in MATTERS[family]:
        a, b = ours.value(path), published.value(path)
        if a is None or b is None or a != b:
            out.append(f"{path} (ours {NOT_STATED if a is None else a}, published {NOT_STATED if b is None else b})")
    return out


# ------------------------------------------------------------------------------------ quantities

# quantity -> unit, the better direction and the family whose settings must match for a difference.
QUANTITIES: dict[str, dict[str, Any]] = {
    "latency": {"unit": "ms", "better": "lower", "family": "latency"},
    "latency spread": {"unit": "ms", "better": None, "family": None},
    "memory": {"unit": "MiB", "better": "lower", "family": "memory"},
    "flops": {"unit": "GFLOPs", "better": "lower", "family": "flops"},
    "macs": {"unit": "GMACs", "better": "lower", "family": "flops"},
    "params": {"unit": "M", "better": None, "family": "params"},
    "psnr": {"unit": "dB", "better": "higher", "family": "quality"},
    "ssim": {"unit": "", "better": "higher", "family": "quality"},
    "lpips": {"unit": "", "better": "lower", "family": "quality"},
    "psnr difference": {"unit": "dB", "better": "higher", "family": "quality"},
    "ratio": {"unit": "x", "better": None, "family": None},
    "speed-up": {"unit": "x", "better": "higher", "family": None},
    "exponent": {"unit": "", "better": None, "family": None},
    "seconds": {"unit": "s", "better": "lower", "family": None},
    "steps": {"unit": "steps", "better": "lower", "family": None},
    "count": {"unit": "", "better": None, "family": None},
    "error": {"unit": "", "better": "lower", "family": None},
    "throughput": {"unit": "", "better": "higher", "family": None},
}

# The harness's own column names -> quantity, tried in order (first match wins). Kinds declare a column
# where its name says too little; these words are the harness's, written by its kinds, not guesses about
# somebody else's table.
_COLUMN_WORDS: list[tuple[str, str]] = [
    (r"speed-?up", "speed-up"), (r"ratio|/ published|\bx\b fewer", "ratio"), (r"exponent|slope", "exponent"),
    (r"\biqr\b", "latency spread"), (r"psnr.*(diff|drop|gain|vs)|(diff|drop|gain).*(db|psnr)|_db$|\bdb\b", "psnr difference"),
    (r"psnr", "psnr"), (r"ssim", "ssim"), (r"lpips", "lpips"), (r"latency|\bms\b|_ms\b", "latency"),
    (r"mib|_mb\b|\bmb\b|memory", "memory"), (r"tflop/s|mfu|throughput", "throughput"), (r"gmac|\bmacs?\b", "macs"),
    (r"gflop|flops", "flops"), (r"params", "params"), (r"seconds|\bs\b|_s$|wall", "seconds"), (r"steps?\b", "steps"),
    (r"max abs|error|mean abs|diff\|", "error"),
]
SETTING_COLUMNS = {"N", "M", "n_input", "n_target", "n_cached", "N cached", "seed", "mode", "preset", "dtype", "image_size",
                   "px", "batch", "threads", "step", "world_size"}


def quantity_of(name: str) -> str | None:
    low = name.lower()
    for pattern, quantity in _COLUMN_WORDS:
        if re.search(pattern, low):
            return quantity
    return None


# --------------------------------------------------------------------------------------- tables


class Column(_Strict):
    name: str
    role: Role = "ours"
    quantity: str | None = None
    unit: str = ""
    better: Better | None = None
    setting: str = "ours"  # which of the table's settings its numbers were measured or published under
    of: str | None = None  # a published, ratio or difference column: the column of ours it sits beside


class Comparison(_Strict):
    """A published column beside one of ours: subtracted (`difference` names the new column) only where
    `differing` is empty; otherwise the reason stays here and on the page."""
    ours: str
    published: str
    quantity: str | None
    differs: list[str]
    difference: str | None = None


class TableData(_Strict):
    stem: str
    title: str
    notes: list[str] = []
    columns: list[Column]
    rows: list[dict[str, Any]]
    settings: dict[str, Setting] = {}
    comparisons: list[Comparison] = []
    # Per row: ok, noisy (its timing spread passes the threshold, or the CPU was shared), published (numbers
    # from a source, not measured here) or failed (asked for, not measured; its reason is in the notes).
    status: list[Literal["ok", "noisy", "published", "failed"]] = []
    floatfmt: str = ".4g"
    console: bool = True

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=[c.name for c in self.columns])


class Fact(_Strict):
    """One number the index may show in its one-screen comparison: what it is (`quantity`, a phrase that
    names its setting), for which variant, and where it sits (the table and row of this report)."""
    variant: str
    quantity: str
    value: float
    low: float | None = None  # a range (seeds) around the value, where there is one
    high: float | None = None
    unit: str = ""
    better: Better | None = None
    table: str
    row: int
    setting: str = ""  # the setting in one line (`Setting.describe`)


class FigureData(_Strict):
    file: str
    caption: str = ""


class ReportData(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    experiment: str
    kind: str
    title: str
    notes: list[str] = []
    setting: Setting = Setting()
    headlines: list[str] = []
    facts: list[Fact] = []
    tables: list[TableData] = []
    figures: list[FigureData] = []
    not_run: list[str] = Field(default_factory=list)  # arms or points asked for and not measured, each with why
    commit: str | None = None
    written: str | None = None


def _cell(value: Any) -> Any:
    """A JSON-safe cell: numbers stay numbers (NaN and inf become None), numpy scalars become Python ones."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def typed_column(name: str, values: Sequence[Any], declared: Column | Mapping[str, Any] | None = None) -> Column:
    """A column's type: what its producer declared, else read from the harness's own column words; text
    columns are labels, numbers ours."""
    if isinstance(declared, Column):
        return declared
    spec = dict(declared or {})
    numeric = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
    role = spec.pop("role", None)
    if role is None:
        role = "setting" if name in SETTING_COLUMNS else "ours" if numeric else "label"
    quantity = spec.pop("quantity", None)
    if quantity is None and role not in ("label", "setting", "note"):
        quantity = quantity_of(name)
    if role == "ours" and quantity in ("ratio", "speed-up"):  # a ratio of ours is compared as a ratio
        role = "ratio"
    known = QUANTITIES.get(quantity or "", {})
    return Column(name=name, role=role, quantity=quantity, unit=spec.pop("unit", known.get("unit", "")),
                  better=spec.pop("better", known.get("better")), **spec)


def _row_status(row: Mapping[str, Any], columns: Sequence[Column]) -> str:
    """noisy where its `noisy` cell says so; published where its setting cell names a published source."""
    if any(c.name == "noisy" and row.get(c.name) not in (None, "", False) for c in columns):
        return "noisy"
    if any(c.role == "setting" and c.name == "setting" and str(row.get(c.name) or "").startswith("published") for c in columns):
        return "published"
    return "ok"


def table_data(stem: str, title: str, frame: pd.DataFrame, notes: Iterable[str] = (),
               columns: Mapping[str, Column | Mapping[str, Any]] | None = None, settings: Mapping[str, Setting] | None = None,
               compare: Sequence[tuple[str, str]] = (), floatfmt: str = ".4g", console: bool = True,
               status: Sequence[str] = ()) -> TableData:
    """A table from a DataFrame: every cell JSON-safe, every column typed, each row's status (given, else
    read from its `noisy` and `setting` cells), and each (ours, published) pair in `compare` either
    subtracted (settings match) or recorded with the fields that differ."""
    rows = [{str(k): _cell(v) for k, v in record.items()} for record in frame.to_dict(orient="records")]
    declared = dict(columns or {})
    typed = [typed_column(str(name), [r.get(str(name)) for r in rows], declared.get(str(name))) for name in frame.columns]
    table = TableData(stem=stem, title=title, notes=list(notes), columns=typed, rows=rows, settings=dict(settings or {}),
                      floatfmt=floatfmt, console=console,
                      status=list(status) if status else [_row_status(r, typed) for r in rows])
    for ours, published in compare:
        add_comparison(table, ours, published)
    return table


def add_comparison(table: TableData, ours: str, published: str) -> Comparison:
    """Subtract a published column from ours where the settings of the two match; else say why not."""
    a, b = table.column(ours), table.column(published)
    quantity = a.quantity or b.quantity
    ours_setting, published_setting = table.settings.get(a.setting, Setting()), table.settings.get(b.setting, Setting())
    differs = differing(quantity, ours_setting, published_setting)
    comparison = Comparison(ours=ours, published=published, quantity=quantity, differs=differs)
    if not differs:
        name = f"{ours} − published"
        at = table.columns.index(b) + 1
        table.columns.insert(at, Column(name=name, role="difference", quantity=quantity, unit=a.unit, better=a.better,
                                        setting=a.setting, of=ours))
        for row in table.rows:
            x, y = row.get(ours), row.get(published)
            row[name] = x - y if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None
        comparison.difference = name
    else:
        table.notes.append(f"'{ours}' and '{published}' are not subtracted (settings differ: " + "; ".join(differs)
                           + "); compare ratios between variants, exponents and orderings instead")
    table.comparisons.append(comparison)
    return comparison


# -------------------------------------------------------------------------------------- writing


def markdown_of(table: TableData) -> str:
    return markdown(table.frame(), table.floatfmt)


def write_table_files(table: TableData, out_dir: Path) -> dict[str, Path]:
    """`<stem>.md`, `.csv` and `.tex` of one table, each headed by its title, the setting of its numbers and
    its notes."""
    notes = ([f"setting: {table.settings['ours'].describe()}"] if "ours" in table.settings else []) + table.notes
    md = f"# {table.title}\n\n" + "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "") + markdown_of(table) + "\n"
    body = tabulate(missing_as_none(table.frame()), headers="keys", tablefmt="latex_booktabs", showindex=False, floatfmt=table.floatfmt,
                    missingval="n/a")
    tex = "".join(f"% {n}\n" for n in [table.title, *notes]) + body + "\n"
    paths = {"md": out_dir / f"{table.stem}.md", "csv": out_dir / f"{table.stem}.csv", "tex": out_dir / f"{table.stem}.tex"}
    write_atomic(paths["md"], md)
    write_atomic(paths["csv"], table.frame().to_csv(index=False, na_rep="n/a"))
    write_atomic(paths["tex"], tex)
    return paths


def write_report_json(report: ReportData, out_dir: Path) -> Path:
    path = Path(out_dir) / REPORT_FILE
    write_atomic(path, report.model_dump_json(indent=1) + "\n")
    return path


def read_report(path: str | Path) -> ReportData:
    """A written report, validated; a file that is not one is a one-line error naming it."""
    path = Path(path)
    try:
        return ReportData.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        first = error.errors(include_url=False)[0] if isinstance(error, ValidationError) else None
        where = ".".join(map(str, first["loc"])) + ": " + first["msg"] if first else str(error).splitlines()[0]
        raise ConfigError(f"{path}: not a report of schema {SCHEMA_VERSION} ({where}); rebuild it: "
                          "python -m harness run EXPERIMENT.yaml --from-records") from None


def reports_under(results: str | Path) -> dict[Path, ReportData]:
    """Every report.json directly in a folder of `results` (folder -> report)."""
    out = {}
    for path in sorted(Path(results).glob(f"*/{REPORT_FILE}")):
        out[path.parent] = read_report(path)
    return out
