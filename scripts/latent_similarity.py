"""How alike the encoder-decoder's encoded latent tokens are: the mean pairwise cosine similarity
between latents (1 = all identical), averaged over the convergence validation scenes.

    .venv/bin/python scripts/latent_similarity.py [CHECKPOINT ...]

Prints it for fresh models at the official latent init std (0.02) and at 1.0, then for each given
checkpoint of `lvsm_encoder_decoder` (e.g. results/convergence/runs/lvsm_encoder_decoder/checkpoint.pt).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.checkpoint import load_checkpoint  # noqa: E402
from harness.schema import load_experiment  # noqa: E402
from harness.train.data import evaluation_split, open_sources  # noqa: E402
from models import build_model  # noqa: E402


@torch.no_grad()
def latent_similarity(model, batches) -> float:
    values = []
    for batch in batches:
        latents = model.encode(batch["input_images"], batch["input_c2w"], batch["input_fxfycxcy"])
        z = torch.nn.functional.normalize(latents, dim=-1)
        n = z.shape[1]
        values.append(((z @ z.transpose(1, 2)).sum((1, 2)) - n) / (n * (n - 1)))
    return torch.cat(values).mean().item()


def main(paths: list[str]) -> None:
    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments/convergence.yaml")
    spec = exp.model_spec("lvsm_encoder_decoder")
    _, evaluation = open_sources(exp.data, cache=False)
    batches = evaluation_split(evaluation, exp.data, batch_size=8).batches
    for std in (0.02, 1.0):
        torch.manual_seed(0)
        model = build_model(spec.name, spec.preset, **{**spec.overrides, "latent_init_std": std}).eval()
        print(f"fresh model, latent_init_std {std}: {latent_similarity(model, batches):.3f}")
    for path in paths:
        model, meta = load_checkpoint(path, "lvsm_encoder_decoder")
        print(f"{path} (step {meta.step}, latent_init_std {meta.config.get('latent_init_std', 0.02)}): "
              f"{latent_similarity(model, batches):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
