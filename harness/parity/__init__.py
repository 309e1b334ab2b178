"""Side by side with the official code (kind `parity`, experiments/parity.yaml): renders, FLOPs and
latency of each variant with the same weights, and the official data loader against ours."""
