"""lvsm-bench harness: data, metrics, profiling, training, evaluation, records, tables, plots."""
