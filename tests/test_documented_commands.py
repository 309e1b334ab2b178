"""Every documented command can run: each Makefile target's `python -m harness` lines, and those of the
README, parse with the command line this harness has, name experiment files that validate with their
`--set` overrides, and pass only run options their kind reads. Targets that need data or a checkout
take dummy values here; that they fail in one line without them is tested where each is run."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.schema import RunOptions, get_kind, load_experiment

ROOT = Path(__file__).resolve().parent.parent
TARGETS = re.findall(r"^([a-z0-9-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
# What a user passes to the targets that need it (any value: these commands are parsed, not run).
VARIABLES = ["RE10K_DIR=/data/re10k", "OBJECTS_DIR=/data/objects", "OBJECTS_FORMAT=opencv_cameras", "CHECKPOINT=a.pt",
             "CHECKPOINTS=lvsm_decoder_only=a.pt", "OFFICIAL_LVSM=/x", "OFFICIAL_EFFICIENT_LVSM=/y", "OFFICIAL_LACT=/z"]


def _harness_commands(text: str) -> list[list[str]]:
    """The argument lists of every `-m harness ...` command in `text`, from `run`/`validate` on."""
    commands = []
    for line in text.splitlines():
        if "-m harness" not in line:
            continue
        words = shlex.split(line.split("-m harness", 1)[1].split("#")[0])
        if words:
            commands.append(words)
    return commands


def _check(words: list[str], where: str) -> None:
    args = build_parser().parse_args(words)  # argparse exits (SystemExit) on a flag it does not know
    if args.command != "run":
        return
    spec = load_experiment(ROOT / args.experiment if not Path(args.experiment).is_absolute() else args.experiment, args.set)
    options = RunOptions(args.preset, tuple(args.checkpoint), True, args.ship_weights, args.force_ship, args.from_records)
    ignored = set(options.given()) - get_kind(spec.kind).reads
    assert not ignored, f"{where}: {' '.join(words)}: kind {spec.kind} does not read {ignored}"


def test_the_makefile_documents_its_targets():
    assert {"bench", "test", "eval", "convergence", "parity", "benchmarks", "table-objects"} <= set(TARGETS)


@pytest.mark.parametrize("target", [t for t in TARGETS if t not in ("test", "help")])
def test_each_make_target_runs_commands_that_parse_and_validate(target):
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed-stamp", target, *VARIABLES], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    commands = _harness_commands(dry.stdout)
    for words in commands:
        _check(words, f"make {target}")
    if target not in ("gpu-check", "benchmarks"):  # a script and pytest: no harness command of their own
        assert commands, f"make {target} runs no harness command: {dry.stdout}"


def test_the_readme_commands_parse_and_their_targets_exist():
    readme = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```\n(.*?)```", readme, re.S))
    for target in re.findall(r"^make ([a-z0-9-]+)", blocks, re.M):
        assert target in TARGETS, target
    for words in _harness_commands(blocks):
        if words[0] == "run" and words[1] == "FILE":  # the synopsis line: its flags, on a real experiment
            words = ["run", "experiments/bench.yaml", *[w for w in words[2:] if w.startswith("--") and "..." not in w
                                                          and w not in ("--set", "--preset", "--checkpoint", "--plugin")]]
        if words[0] in ("run", "validate", "ls", "paper", "site", "preview") and not any("{" in w or "FILE" in w for w in words):
            _check(words, "README")
