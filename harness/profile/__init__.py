"""Profiling: FLOPs (counted on the meta device and analytic), latency and peak memory of the
variants as the numbers of input views N and target views M grow, and where a forward's time and
copies go.

Three modules a reader follows in order: `measure` (inputs, FLOP counting, timing, memory, one
measured call, the run's context), `kinds` (the four experiment kinds: their YAML fields, points and
measurement) and `report` (tables, ratios, growth exponents and plots built from the recorded rows).
`ops` is the `op_profile` kind on its own: torch.profiler's top operations and the bytes a forward
copies, with its spec, measurement and report.
`one_more_target` is the `profile_one_more_target` kind on its own: the cost of rendering one more
target view from a scene state (`encode_scene` / `render_scene`) against N.
"""
