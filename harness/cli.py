"""One entry point: `python -m harness <command>`."""
from __future__ import annotations

import argparse
import sys

from .errors import HarnessError


def _models(args: argparse.Namespace) -> int:
    from .model_table import model_table
    from .tables import markdown
    print(markdown(model_table(), intfmt=","))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .experiment import run_experiment
    run_experiment(args.experiment, args.set, **({"preset": args.preset} if args.preset else {}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import main_from_cli
    return main_from_cli(args)


def _train(args: argparse.Namespace) -> int:
    from .experiment import run_experiment
    run_experiment(args.experiment, args.set, progress=not args.no_progress)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import time
    from .experiment import run_experiment
    start = time.perf_counter()
    run_experiment("experiments/bench.yaml", [], **({"preset": args.preset} if args.preset else {}))
    print(f"bench: {time.perf_counter() - start:.1f} s wall")
    return 0


def _preview(args: argparse.Namespace) -> int:
    from .data.preview import write_preview
    path = write_preview(args.out, sources=tuple(args.source or ("synthetic_object", "synthetic_scene")), scenes=args.scenes, views=args.views,
                         image_size=args.size, seed=args.seed)
    print(f"preview: wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description="lvsm-bench: LVSM-family benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="the registered variants and their parameter counts per preset")
    p.set_defaults(func=_models)
    p = sub.add_parser("run", help="run an experiment YAML (resumes from its records)")
    p.add_argument("experiment", help="path to experiments/<name>.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the YAML")
    p.add_argument("--preset", default=None, help="model preset (default: the experiment's, or one that suits the device)")
    p.set_defaults(func=_run)
    p = sub.add_parser("evaluate", help="PSNR/SSIM/LPIPS of models or checkpoints on an evaluation index (resumes)")
    p.add_argument("experiment", nargs="?", default="experiments/eval_synthetic.yaml", help="an experiment of kind evaluate")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[MODEL=]PATH",
                   help="evaluate this checkpoint instead of the experiment's models (official ones need MODEL=)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the YAML")
    p.add_argument("--preset", default=None, help="preset of the models evaluated without a checkpoint")
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("bench", help="the main profiling job: latency, memory and FLOPs vs views (experiments/bench.yaml)")
    p.add_argument("--preset", default=None, help="model preset (default: small on CPU, paper on CUDA)")
    p.set_defaults(func=_bench)
    p = sub.add_parser("train", help="run a train/convergence experiment; resumes; multi-GPU: torchrun --nproc_per_node N -m harness train ...")
    p.add_argument("experiment", help="path to experiments/<name>.yaml (kind train or convergence)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the YAML")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)
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
    try:
        return args.func(args)
    except (HarnessError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
