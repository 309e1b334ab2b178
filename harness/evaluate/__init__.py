"""Kind `evaluate`: image quality of models (a registered variant at a preset, or a checkpoint of ours
or an official one) on an evaluation index of a data source.

Each (model, scene) is one point of the shared pipeline: its target views are rendered, PSNR / SSIM /
LPIPS computed per view, and one row (the per-view values and the scene means) appended to
`rows.jsonl` the moment it exists. A scene that fails (bad data or a model error) is recorded with its
reason and the run goes on; the summary lists the failures and the command exits 1; a rerun retries
only those. The summary (mean over scenes of the per-scene means, the protocol's number) is rebuilt
from the rows, beside the published numbers of the variants' cards and of other methods, plus a PNG
grid of inputs, ground truth and every model's render for a few scenes.

Modules a reader follows in order: `spec` (what the experiment YAML may say), `inputs` (the data
source, the evaluation index and the models), `scoring` (the loop over models and scenes that records
one row per scene), `report` (tables, notes, headlines and the grid, built from the rows) and `kind`
(the entry the CLI calls).
"""
