"""The measurement worker: one process, one fresh ONNX Runtime session, one `LatencyStats`.

Run as ``python -m edge_search.devices.worker [--request FILE] [--out FILE]``; it reads a
`WorkerRequest` as JSON (stdin by default) and writes exactly one JSON line (stdout by default):
the `LatencyStats` on success (``mode: measure``), ``{"nodes": [...]}`` for ``mode: profile``, or
``{"error": {"kind": "input"|"runtime", "message": ...}}`` on failure, with exit code 2 or 1.
Anything else that writes to fd 1 (a native library, a stray print) is redirected to stderr, so
the result line cannot be corrupted.

What a measurement does, in order:

1. Pin the process to the allowed cores (``os.sched_setaffinity``) *before* importing ONNX
   Runtime, so its thread pools are created inside the allowed set.
2. Reset the RSS high-water mark (``/proc/self/clear_refs``), then create a fresh
   ``InferenceSession`` with every `SessionOptions` knob set explicitly; time the load.
3. Build seeded inputs from the session's input signature (`edge_search.devices.inputs`); time the
   first run separately.
4. Warm up: at least ``warmup_min_runs`` runs *and* ``warmup_min_s`` seconds, then windows of runs
   until the median of a window is within ``warmup_drift`` of the previous one (steady), capped at
   ``warmup_max_s``.
5. Repeat, timing only ``session.run`` with ``time.perf_counter_ns``; every few samples compute the
   distribution-free CI of the median (`stats.median_ci`) and stop when its half-width is within
   ``precision_target`` of the median, at ``max_time_s``, or at ``max_samples``; record which.
   The worker runs at raised priority where permitted (``nice``, see `WorkerRequest`).
6. Report peak memory (RSS high-water mark over the pre-session baseline), CPU steal on the used
   cores and the share of them other processes took (both from ``/proc/stat``), throttling where the
   kernel exposes it, host metadata and warnings.

Spinning: ``session.intra_op.allow_spinning`` and ``session.inter_op.allow_spinning`` are both set
to ``"1"`` by default (ONNX Runtime's own default), so the figure matches what a deployed session
with default options sees; the choice is recorded in ``knobs["allow_spinning"]`` and can be turned
off per request (``allow_spinning: false``) to model a power-saving deployment.

Modules: `request` (the `WorkerRequest` the parent sends), `engine` (the steps above),
`probes` (host probes: CPU model, steal, throttling, peak memory), `entry` (the process's main).
"""
