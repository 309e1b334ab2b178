"""One entry point, `python -m harness` or `lvsm-bench`:

    run FILE [--set KEY=VALUE]... [--preset P] [--checkpoint [MODEL=]PATH]... [--plugin PATH]... [--no-progress]
        [--ship-weights [--force-ship]] [--from-records | --keep-recorded]
    ls {models,kinds,sources,presets} [--plugin PATH]...
    validate FILE... [--plugin PATH]...
    paper [--index-only | --from-records]
    site [--experiments DIR] [--results DIR] [--out DIR] [--screenshot PAGE]...
    preview [--out PNG] [--source NAME]... [--scenes K] [--views V] [--size S] [--seed N]

Exit status: 0 when every point, scene or run asked for is recorded `ok`; 1 when any of them failed
(each failure is a row with its reason, listed above the last line; a rerun retries it); 2 on a user
mistake or a resource the run cannot do without (any HarnessError: one line `error: ...`, `--debug`
shows its traceback; a full disk included); 130 on Ctrl-C (one line saying how much is recorded).
`validate` exits 0 for a valid experiment, and names what this machine lacks to run it.
Anything else is a bug and keeps its traceback.

Every kind also runs under torchrun: `torchrun --nproc_per_node K [--nnodes ...] -m harness run FILE`
(see `harness.distributed`). Rank 0 prints the report, the failures and a user error every rank
shares; another rank prints only an error of its own (prefixed with its rank); each exits with the
status above.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from .errors import ConfigError, HarnessError

log = logging.getLogger("harness")


def _failures(name: str, book) -> int:
    """1 and one error line per failed point (then a total) when the command left any failed; else 0."""
    from .distributed import current_world
    outcome = book.outcome()
    if not outcome.failed:
        return 0
    if not current_world().is_main:
        return 1  # rank 0 lists them
    for failure in outcome.failed:
        log.error("failed: %s", failure)
    log.error("%s: %d of %d points failed (each is recorded with its reason); rerun to retry them", name,
              len(outcome.failed), outcome.points)
    return 1


def _run(args: argparse.Namespace, book) -> int:
    from .plugins import load_plugins
    from .schema import RunOptions, load_experiment, run_spec
    load_plugins(args.plugin)
    spec = load_experiment(args.experiment, args.set)
    start = time.perf_counter()
    run_spec(spec, RunOptions(args.preset, tuple(args.checkpoint), not args.no_progress, args.ship_weights, args.force_ship,
                              args.from_records, args.keep_recorded))
    log.info("%s: done in %.1f s wall", spec.name, time.perf_counter() - start)
    return _failures(spec.name, book)


def models_table():
    """Every registered variant: label, its own config fields, what it offers, parameters per preset and
    the official count."""
    import pandas as pd
    import torch

    from models import build_model, config_class, list_models, model_card, model_class, preset_names, presets
    rows = []
    for name in list_models():
        card, cls = model_card(name), model_class(name)
        row = {"model": name, "label": card.label}
        for preset in preset_names():
            if preset in presets(name):
                with torch.device("meta"):
                    row[f"params {preset}"] = f"{build_model(name, preset).num_parameters():,}"
            else:
                row[f"params {preset}"] = "no such preset"
        row["official (paper)"] = f"{card.official_params:,}" if card.official_params else "n/a"
        row["own config fields"] = ", ".join(config_class(name).own_fields())
        row["offers"] = ", ".join(c for c in ("scene_state", *sorted(cls.capabilities)) if cls.offers(c))
        row["cameras"] = ", ".join(cls.camera_encodings)
        row["paper / ablation of"] = card.ablation_of or card.paper.split(",")[0]
        rows.append(row)
    return pd.DataFrame(rows)


def _ls(args: argparse.Namespace, book) -> int:
    from .plugins import load_plugins
    from .tables import markdown
    load_plugins(args.plugin)
    if args.what == "models":
        print(markdown(models_table()))
    elif args.what == "kinds":
        from .schema import KINDS, get_kind
        for name in KINDS:
            print(f"{name:20s} {get_kind(name).summary}")
    elif args.what == "sources":
        from .data import list_sources
        from .data.registry import source_options
        for name in list_sources():
            print(f"{name:20s} options: {', '.join(source_options(name))}")
    else:
        from models import label, list_models, preset_names, presets

        from .runtime import AUTO_PRESET, resolve_preset
        for preset in preset_names():
            print(preset)
            for name in list_models():
                if preset in presets(name):
                    print(f"  {label(name):40s} {presets(name)[preset].describe()}")
        print(f"{'auto':8s} by device: {', '.join(f'{k} -> {v}' for k, v in AUTO_PRESET.items())} (here: {resolve_preset('auto')})")
    return 0


def _validate(args: argparse.Namespace, book) -> int:
    from .plugins import load_plugins
    from .schema import load_experiment
    load_plugins(args.plugin)
    for path in args.experiments:
        spec = load_experiment(path, args.set)
        missing = spec.missing_resources()  # valid all the same: a run here would stop at once and say so
        print(f"{path}: ok (kind {spec.kind}, name {spec.name})" + (f"; cannot run here: {'; '.join(missing)}" if missing else ""))
    return 0


def _preview(args: argparse.Namespace, book) -> int:
    from .data.preview import write_preview
    for key in ("scenes", "views", "size"):
        if getattr(args, key) <= 0:
            raise ConfigError(f"preview --{key}: expected a positive int, got {getattr(args, key)}")
    path = write_preview(args.out, sources=tuple(args.source or ("synthetic_object", "synthetic_scene")), scenes=args.scenes,
                         views=args.views, image_size=args.size, seed=args.seed)
    print(f"preview: wrote {path}")
    return 0


def _paper(args: argparse.Namespace, book) -> int:
    from .paper import run_all, write_index
    from .plugins import load_plugins
    load_plugins(args.plugin)
    if not args.index_only:
        run_all(args.experiments, progress=not args.no_progress, from_records=args.from_records)
    print(f"paper: wrote {write_index(args.experiments, args.out)}")
    return _failures("paper", book)


def _site(args: argparse.Namespace, book) -> int:
    from .plugins import load_plugins
    from .site import build_site
    load_plugins(args.plugin)
    index = build_site(args.experiments, args.results, args.out)
    print(f"site: wrote {index}")
    if args.screenshot:
        from .site.browser import write_screenshots
        for path in write_screenshots(index.parent, args.screenshot):
            print(f"site: wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvsm-bench", description="lvsm-bench: LVSM-family benchmark harness")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="PATH.py",
                        help="import a file that registers variants, data sources or kinds (repeatable)")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a key of the YAML (dotted keys, YAML values; repeatable)")

    p = sub.add_parser("run", parents=[plugin, overrides], help="run an experiment YAML of any kind (resumes from its rows)")
    p.add_argument("experiment", help="path to experiments/<name>.yaml")
    p.add_argument("--preset", default=None, help="preset of every model the experiment builds from a preset, for every kind "
                                                     "(default: the experiment's; auto = paper on CUDA, small on CPU)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                   help="evaluate this checkpoint instead of the experiment's models (official ones need MODEL=)")
    p.add_argument("--ship-weights", action="store_true",
                   help="a training study only, run as its file defines it: write the trained weights into the folder its "
                        "ship_weights names (what make eval evaluates); without it they stay in the run's output folder")
    p.add_argument("--force-ship", action="store_true", help="with --ship-weights: replace shipped weights of another model config")
    p.add_argument("--from-records", action="store_true",
                   help="its report.json, tables and figures from the rows already recorded, whatever code version recorded "
                        "them; measures nothing (a training study: runs trained with the settings asked for, and the clean "
                        "cost of a step only where none is recorded)")
    p.add_argument("--keep-recorded", action="store_true",
                   help="a training study only: keep every run already recorded with the settings asked for (whatever code "
                        "version recorded it) and train only the others: a long study resumed across code changes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
    p = sub.add_parser("ls", parents=[plugin], help="list the registered models, experiment kinds, data sources or presets")
    p.add_argument("what", choices=["models", "kinds", "sources", "presets"])
    p.set_defaults(func=_ls)
    p = sub.add_parser("validate", parents=[plugin, overrides], help="check experiment YAMLs without running them")
    p.add_argument("experiments", nargs="+", metavar="FILE")
    p.set_defaults(func=_validate)
    p = sub.add_parser("paper", parents=[plugin], help="run every paper study that fits this machine, then write results/README.md")
    p.add_argument("--index-only", action="store_true", help="only rebuild results/README.md from the recorded reports")
    p.add_argument("--from-records", action="store_true",
                   help="rebuild every recorded experiment's report.json, tables and figures from its rows (nothing measured), "
                        "then results/README.md")
    p.add_argument("--experiments", default="experiments", help="folder of experiment YAMLs")
    p.add_argument("--out", default="results/README.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_paper)
    p = sub.add_parser("site", parents=[plugin], help="static HTML pages of every table, plot and render recorded -> results/site/")
    p.add_argument("--experiments", default="experiments", help="folder of experiment YAMLs")
    p.add_argument("--results", default="results", help="folder the experiments wrote to")
    p.add_argument("--out", default=None, help="where the site goes (default: RESULTS/site)")
    p.add_argument("--screenshot", action="append", default=[], metavar="PAGE",
                   help="also save what a reader sees of PAGE (index, an experiment's name) in headless Chromium -> screenshots/PAGE.png")
    p.set_defaults(func=_site)
    p = sub.add_parser("preview", help="PNG grid of a few synthetic scenes and their views")
    p.add_argument("--out", default="results/preview/preview.png")
    p.add_argument("--source", action="append", default=None, help="data source(s) to show (default: both synthetic ones)")
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import close_world, current_world, env_rank, env_world_size, joined
    rank, several = env_rank(), env_world_size() > 1
    # Under torchrun rank 0 says what happens; the other ranks speak up only about warnings and errors.
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO, stream=sys.stderr,
                        format=f"%(levelname)s {f'[rank {rank}] ' if several else ''}%(name)s: %(message)s")
    from .outputs import ledger
    with ledger() as book:
        try:
            status = args.func(args, book)
            if joined():  # the ranks leave the group together: gloo aborts a rank that leaves while rank 0 still writes
                current_world().barrier()
            return status
        except HarnessError as error:
            if args.debug:
                raise
            # An error every rank meets alike (a bad file read before the ranks joined, a refusal rank 0
            # decided for all) is printed once, by rank 0.
            if rank == 0 or (joined() and not error.every_rank):
                print(f"error: {f'rank {rank}: ' if rank else ''}{' '.join(str(error).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if args.debug:
                raise
            if rank == 0:
                print(f"\ninterrupted: {book.outcome().recorded} points recorded; rerun the same command to resume",
                      file=sys.stderr)
            return 130
        finally:
            close_world()
