"""The registered variants and their sizes at every preset."""
from __future__ import annotations

import pandas as pd
import torch

from models import PRESETS, build_model, list_models

# Official parameter counts (reference fixtures' keys_*.txt, paper-size models on the meta device).
OFFICIAL_PARAMETERS = {
    "lvsm_decoder_only": 170_795_520,
    "lvsm_encoder_decoder": 173_154_816,
    "efficient_lvsm": 199_070_208,
}


def model_table() -> pd.DataFrame:
    rows = []
    for name in list_models():
        row = {"model": name}
        for preset in PRESETS:
            with torch.device("meta"):
                row[f"params_{preset}"] = build_model(name, preset).num_parameters()
        official = OFFICIAL_PARAMETERS.get(name)
        # Ablations have no official release to compare with.
        row["official_paper_params"] = f"{official:,}" if official else "n/a (ablation)"
        rows.append(row)
    return pd.DataFrame(rows)
