"""Fitting the physics model to measured latencies, and leave-one-family-out bands.

The model (one for every device and path, fitted jointly to all published rows):

    t = overhead + nodes x node_cost + sum_k  W_k / (peak_k x eff_k) / s_k(threads)

- ``W_k``: the model's work in class k (`physics.model_work`: GFLOP, or GB for ``memory``);
- ``peak_k``: the datasheet roofline (`physics.cpu_peaks` / `gpu_peaks`; the row's clock when it
  states one): per-core FLOP/s of the precision for compute classes, memory bandwidth for ``memory``;
- ``eff_k`` = exp(global class efficiency of the path and precision + device offset + device x
  class deviation + runtime x class-group factor); ONNX Runtime is the reference runtime (factor
  0) on the CPU, its TensorRT provider on the GPU, so every other runtime (ncnn, XNNPACK, Arm NN,
  OpenCV, PyTorch, TensorRT, ...) is carried through a fitted ratio per ISA, precision and group;
- ``s_k(n) = 1 + (n - 1) x eta``, eta = sigmoid(device term + runtime term) for compute classes and
  for bandwidth classes (depthwise, memory), fitted from the rows at 1 and at n threads; a runtime
  without 1-thread rows (ONNX Runtime) scales like the typical runtime on that device;
- ``overhead`` and ``node_cost`` per device and path, with a runtime factor on the node cost;
- int8 on the CPU is tied to fp32: ONNX Runtime's int8 efficiency is its fp32 efficiency times one
  fitted ratio per core kind (with or without an int8 dot-product instruction, `PRIOR_INT8_RATIO`),
  plus device terms; the other runtimes have their own ratio and class pattern (``q_rt``), so ncnn's
  or XNNPACK's int8 speed-ups do not become ONNX Runtime's;
- fp16 on the GPU is tied to fp32 the same way (``q.gpu.fp16.<group>``, prior ratio 1 with log sd 0.3:
  the same share of the doubled peak), and a runtime's own precision term (``rt.<r>.gpu.fp16``) is
  wide: OpenCV's CUDA fp16 is 4.5x slower than its fp32 on the Nano, which with independent fp16
  efficiencies made ONNX Runtime's fp16 depthwise 7x less efficient than fp32 (fp16 slower than fp32);
- a benchmark effect per non-reference benchmark (source x runtime x device x path x precision:
  one setup, OS, clock and timing method), normal with a spread tau estimated from the data
  (`estimate_tau`): a held-out family of a known benchmark is predicted with its effect, a new setup
  (a user's) at the runtime level without it (`predict(level="runtime")`); the shipped bands are
  runtime-level held-out errors.

Every parameter has a Gaussian prior (log space; logit for eta), so a class or runtime with
little data stays at a physically plausible value; the fit is a least-squares fit of log latency
(`scipy.optimize.least_squares` with the analytic Jacobian) plus the prior terms.

`lofo` refits once per architecture family with that family held out and predicts it: those
errors, never in-sample residuals, make the bands (`bands_from_errors`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from edge_search.devices.emulation.physics import COMPUTE_WORK, WORK_CLASSES, ModelWork

SIGMA_OBS = 0.25
"""Assumed spread of log latency around the model (published figures of one model on one board
differ by tens of per cent between sources); scales the data against the priors."""
RT_GROUPS = ("conv3", "dense", "depthwise", "memory")
"""Class groups a runtime factor is fitted for: 3x3 convs (Winograd in ncnn/Arm NN/OpenCV), other
dense compute, depthwise, memory-bound."""
_RT_GROUP = {"conv3": "conv3", "convk": "dense", "pointwise": "dense", "gemm": "dense",
             "depthwise": "depthwise", "memory": "memory"}
_RT_GROUP_CPU = {**_RT_GROUP, "convk": "convk"}
"""CPU runtimes also get their own factor for strided and larger-kernel convs: ncnn and Arm NN have
hand-written 3x3 (Winograd, 3x3s2) kernels and run the rest through im2col, so their k x k rate is
their own, not ONNX Runtime's (`CPU_TIED_TO_CONV3`)."""
_THREAD_GROUP = {k: ("compute" if k in COMPUTE_WORK else "memory") for k in WORK_CLASSES}

# prior means (efficiency is a fraction of the roofline peak) and spreads, log space
PRIOR_EFF_CPU = {"conv3": 0.3, "convk": 0.2, "pointwise": 0.3, "gemm": 0.3, "depthwise": 0.05, "memory": 0.15}
PRIOR_EFF_GPU = {"conv3": 0.3, "dense": 0.3, "depthwise": 0.05, "memory": 0.3}
PRIOR_SD = {"eff": 1.0, "dev": 0.5, "dev_prec": 0.3, "devclass": 0.25, "devclass_prec": 0.15, "rt": 0.7,
            "rt_prec": 0.5, "rt_prec_group": 0.25, "eta": 1.0, "eta_rt": 0.7, "overhead": 1.5, "overhead_dev": 0.5,
            "overhead_rt_dev": 0.7, "node": 1.5,
            "node_rt": 1.0, "int8": 0.4, "int8_other": 0.5, "int8_class": 0.3, "gpu_rt_prec": 1.0,
            "gpu_fp16": 0.3, "ref_devgroup": 0.3}
CPU_TIED_TO_CONV3 = {"convk": (0.8, 0.25), "pointwise": (1.0, 0.25)}
"""ONNX Runtime's dense convolutions of other shapes as a ratio of its 3x3 rate (prior mean, log sd).
MLAS runs every dense convolution through one path (im2col + SGEMM; a 1x1 without the im2col), so a
strided or 7x7 conv and a 1x1 reach about the per-FLOP rate of a 3x3 (the 7x7 stem's small channel
count costs a little: 0.8). The parameter ``eff.cpu.fp32.<k>`` of these classes is this log ratio,
added to ``eff.cpu.fp32.conv3``. Before the tie each class had its own efficiency, and the other
runtimes' rows (ncnn's and Arm NN's Winograd 3x3s, most of the data) set the split: ONNX Runtime's
strided convs came out 2.4x slower per FLOP than its 3x3s, and ResNet-18 (0.58 of 3.6 GFLOP strided or
7x7) was predicted 25-30 % slower than VGG's and RepVGG's ONNX Runtime rows imply. A runtime's own 3x3
advantage is its ``rt.<r>.<isa>.conv3`` factor."""
PRIOR_ETA = {"compute": 0.8, "memory": 0.4}
PRIOR_OVERHEAD_MS = {"cpu": 0.2, "gpu": 1.0}
PRIOR_NODE_US = {"cpu": 10.0, "gpu": 30.0}
PRIOR_RT_GPU = {"tensorrt": (0.0, 0.1), "ort-cuda": (math.log(0.5), 0.7)}
"""GPU runtimes with an informed prior: TensorRT itself runs the engines ONNX Runtime's TensorRT provider
builds (same kernels; the provider's own cost is in its overhead and per-kernel terms), so its
efficiency factor is held close to 0; the CUDA provider is slower (no layer fusion across kernels)."""
PRIOR_INT8_RATIO = {False: (0.65, "int8 kernels without a dot-product instruction (A57/A72: widening "
                            "multiply-accumulate, UMULL/UADALP in ONNX Runtime's MLAS) reach a smaller share of the "
                            "int8 peak than fp32 kernels of the fp32 peak: ~1.3x over fp32 expected, not 2x"),
                    True: (0.5, "with SDOT/UDOT or VNNI the int8 peak is 4x fp32, but requantisation, Q/DQ "
                           "around unquantised ops and im2col in int8 take a larger share: ~2x over fp32 expected")}
"""Prior of ONNX Runtime's int8 efficiency as a ratio of its fp32 efficiency (compute classes), by
whether the core has an int8 dot-product instruction. ONNX Runtime's own guidance: on hardware without
VNNI/dot-product instructions quantisation can give little or no speed-up (onnxruntime.ai, "Why am I not
seeing performance improvements"). This ratio (``q.cpu.int8.<dot|nodot>``) belongs to ONNX Runtime
alone: other runtimes' int8 kernels (ncnn, XNNPACK, Arm NN, TFLite) are their own code, so their
int8/fp32 ratios are fitted apart (``q_rt``, `PRIOR_INT8_RATIO_OTHER`) and do not move ONNX Runtime's."""
PRIOR_INT8_RATIO_OTHER = 1.0
"""Prior int8/fp32 efficiency ratio of the non-reference runtimes (``q_rt.cpu.int8.<dot|nodot>``, sd
`PRIOR_SD` ``int8_other``): no assumption beyond "int8 kernels reach the share of the int8 peak that
fp32 kernels reach of the fp32 peak"; the data (ncnn, XNNPACK, Arm NN, TFLite int8 rows) set it."""
PRIOR_RT_GPU_PREC_SD = {"tensorrt": 0.1}
"""Spread of a GPU runtime's precision term (``rt.<r>.gpu.<precision>``) where it is known to be small:
TensorRT's fp16 kernels are the ones ONNX Runtime's TensorRT provider builds, so TensorRT fp16 rows set
the provider's fp16 efficiency (the provider has no published fp16 rows)."""
TAU_INIT = 0.3
"""Start of the between-benchmark spread (log sd) before it is estimated from the data (`estimate_tau`)."""
BENCH_MIN_ROWS = 3
"""Benchmarks with fewer rows do not inform the between-benchmark spread."""


@dataclass(frozen=True)
class Obs:
    """One latency to fit or predict: a model's work on a device, path, precision, runtime, threads."""

    device: str
    path: str  # "cpu" | "gpu"
    precision: str
    runtime: str
    threads: int
    isa: str  # "arm" | "x86"
    peaks: dict[str, float]  # precision -> GFLOP/s per core (CPU) or device (GPU); "memory" -> GB/s
    work: ModelWork
    family: str
    latency_ms: float = math.nan
    rid: str = ""
    model: str = ""
    bench: str = ""
    """The benchmark the figure belongs to (source x runtime x device x path x precision): figures of one
    benchmark share its setup (runtime version, OS, clock, timing method); empty for a query."""
    dot: bool = False
    """The core has an int8 dot-product instruction (SDOT/UDOT, VNNI)."""


@dataclass
class Prior:
    """Names, prior means and spreads of every parameter."""

    names: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    sd: list[float] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def get(self, name: str, mean: float, sd: float) -> int:
        if name not in self.index:
            self.index[name] = len(self.names)
            self.names.append(name)
            self.mean.append(mean)
            self.sd.append(sd)
        return self.index[name]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def cpu_class_prior(k: str) -> tuple[float, float]:
    """Prior (log mean, log sd) of the parameter ``eff.cpu.fp32.<k>``: a fraction of the peak, or for a
    class in `CPU_TIED_TO_CONV3` its log ratio to the 3x3 rate."""
    if k in CPU_TIED_TO_CONV3:
        m, s = CPU_TIED_TO_CONV3[k]
        return math.log(m), s
    return math.log(PRIOR_EFF_CPU[k]), PRIOR_SD["eff"]


def cpu_class_params(k: str) -> list[str]:
    """The parameters whose sum is ONNX Runtime's log efficiency of class `k` on the CPU at fp32 (before
    the device terms)."""
    return ["eff.cpu.fp32.conv3", f"eff.cpu.fp32.{k}"] if k in CPU_TIED_TO_CONV3 else [f"eff.cpu.fp32.{k}"]


def reference_group_param(device: str, k: str) -> str:
    """The reference runtime's (ONNX Runtime's) own deviation on `device` for class `k`'s group: its
    published rows on a board set its class pattern there without moving the other runtimes'."""
    return f"ref.{device}.cpu.{_RT_GROUP_CPU[k]}"


def cpu_class_terms(pr: Prior, k: str) -> list[int]:
    """Indices of `cpu_class_params` in `pr` (added with their priors when first met)."""
    return [pr.get(n, *cpu_class_prior(n.rsplit(".", 1)[1])) for n in cpu_class_params(k)]


def _row_terms(o: Obs, pr: Prior, reference: str, tau: float
               ) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
    """Parameter indices of one row: per class the efficiency terms and the eta terms, overhead, node cost.

    CPU efficiency of class k at precision p on device d with runtime r (log):
    ``eff.cpu.fp32.k`` [+ ``q.cpu.p.dot|nodot`` (ONNX Runtime) or ``q_rt.cpu.p.dot|nodot`` +
    ``q_rt.cpu.p.k`` (the others) for p != fp32] + ``dev.d.cpu`` +
    ``dev.d.cpu.p`` + ``dev.d.cpu.k`` + ``dev.d.cpu.p.k`` [+ ``rt.r.isa.g`` + ``rt.r.isa.p`` +
    ``rt.r.isa.p.g`` + ``bench.b`` for r != ONNX Runtime]: every level is shrunk toward the one above it
    (a runtime's class-group pattern is shared across precisions; int8 is tied to fp32)."""
    eff: list[list[int]] = []
    eta: list[list[int]] = []
    d, p, path = o.device, o.precision, o.path
    ref = o.runtime == reference
    bench = [] if ref or not o.bench else [pr.get(f"bench.{o.bench}", 0.0, tau)]
    for k in WORK_CLASSES:
        g = (_RT_GROUP_CPU if path == "cpu" else _RT_GROUP)[k]
        if path == "cpu":
            terms = [*cpu_class_terms(pr, k),
                     pr.get(f"dev.{d}.cpu", 0.0, PRIOR_SD["dev"]),
                     pr.get(f"dev.{d}.cpu.{k}", 0.0, PRIOR_SD["devclass"])]
            if p != "fp32":
                if k != "memory":
                    dot = "dot" if o.dot else "nodot"
                    if ref:  # ONNX Runtime's own int8 ratio (MLAS kernels)
                        m = PRIOR_INT8_RATIO[o.dot][0] if p == "int8" else 1.0
                        terms.append(pr.get(f"q.cpu.{p}.{dot}", math.log(m), PRIOR_SD["int8"]))
                    else:
                        terms.append(pr.get(f"q_rt.cpu.{p}.{dot}", math.log(PRIOR_INT8_RATIO_OTHER),
                                            PRIOR_SD["int8_other"]))
                if not ref:  # the other runtimes' int8 class pattern (ONNX Runtime's is its fp32 pattern)
                    terms.append(pr.get(f"q_rt.cpu.{p}.{k}", 0.0, PRIOR_SD["int8_class"]))
                terms += [pr.get(f"dev.{d}.cpu.{p}", 0.0, PRIOR_SD["dev_prec"]),
                          pr.get(f"dev.{d}.cpu.{p}.{k}", 0.0, PRIOR_SD["devclass_prec"])]
            if ref:
                terms.append(pr.get(reference_group_param(d, k), 0.0, PRIOR_SD["ref_devgroup"]))
            else:
                terms += [pr.get(f"rt.{o.runtime}.{o.isa}.{g}", 0.0, PRIOR_SD["rt"]),
                          pr.get(f"rt.{o.runtime}.{o.isa}.{p}", 0.0, PRIOR_SD["rt_prec"]),
                          pr.get(f"rt.{o.runtime}.{o.isa}.{p}.{g}", 0.0, PRIOR_SD["rt_prec_group"])]
            grp = _THREAD_GROUP[k]
            # every runtime, ONNX Runtime included, deviates from the device's thread scaling by its own
            # term: ONNX Runtime has no published 1-thread rows, so it scales like the typical runtime on
            # that device instead of sitting at the global prior
            eta.append([pr.get(f"eta.{d}.{grp}", _logit(PRIOR_ETA[grp]), PRIOR_SD["eta"]),
                        pr.get(f"eta_rt.{o.runtime}.{grp}", 0.0, PRIOR_SD["eta_rt"])])
        else:
            gp = "fp16" if p == "int8" else p  # no int8 GPU rows: int8 is the fp16 efficiency at the int8 peak
            terms = [
                pr.get(f"eff.gpu.fp32.{g}", math.log(PRIOR_EFF_GPU[g]), PRIOR_SD["eff"]),
                pr.get(f"dev.{d}.gpu", 0.0, PRIOR_SD["dev"]),
            ]
            if gp != "fp32":  # fp16 tied to fp32: the same share of the doubled peak (half the bytes moved)
                terms.append(pr.get(f"q.gpu.{gp}.{g}", 0.0, PRIOR_SD["gpu_fp16"]))
            if not ref:
                m, s = PRIOR_RT_GPU.get(o.runtime, (0.0, PRIOR_SD["rt"]))
                terms += [pr.get(f"rt.{o.runtime}.gpu.{g}", m, s),
                          pr.get(f"rt.{o.runtime}.gpu.{gp}", 0.0,
                                 PRIOR_RT_GPU_PREC_SD.get(o.runtime, PRIOR_SD["gpu_rt_prec"]))]
            eta.append([])
        eff.append(terms + bench)
    if path == "gpu":
        # the fixed cost per inference (dispatch, synchronisation, copies) of the reference GPU runtime is
        # one level shared by the boards with a device deviation held close to it, and every other runtime
        # has a factor with its own device deviation: ONNX Runtime GPU rows exist for the Orin only, and with
        # a free level per device the Nano's was set by the other runtimes' fixed costs (ncnn-Vulkan's
        # upload/download: 6.9 ms for BlazeFace) and became ONNX Runtime's (4.45 ms per inference)
        over = [pr.get("overhead.gpu", math.log(PRIOR_OVERHEAD_MS[path]), PRIOR_SD["overhead"]),
                pr.get(f"overhead_dev.{d}.gpu", 0.0, PRIOR_SD["overhead_dev"])]
        if not ref:
            over += [pr.get(f"overhead_rt.{o.runtime}.gpu", 0.0, PRIOR_SD["node_rt"]),
                     pr.get(f"overhead_rt_dev.{o.runtime}.{d}.gpu", 0.0, PRIOR_SD["overhead_rt_dev"])]
    else:  # a level per board: CPU rows of many runtimes, tiny models among them, identify each board's
        over = [pr.get(f"overhead.{d}.cpu", math.log(PRIOR_OVERHEAD_MS[path]), PRIOR_SD["overhead"])]
        if not ref:
            over.append(pr.get(f"overhead_rt.{o.runtime}.cpu", 0.0, PRIOR_SD["node_rt"]))
    node = [pr.get(f"node.{d}.{path}", math.log(PRIOR_NODE_US[path]), PRIOR_SD["node"])]
    if not ref:
        node.append(pr.get(f"node_rt.{o.runtime}.{path}", 0.0, PRIOR_SD["node_rt"]))
    return eff, eta, over, node


@dataclass
class Design:
    """The rows in matrix form: log base rates, work, threads, and sparse maps rows -> parameters."""

    prior: Prior
    logbase: np.ndarray  # (n, K)
    work: np.ndarray  # (n, K)
    nodes: np.ndarray  # (n,)
    threads: np.ndarray  # (n,)
    a_eff: list[np.ndarray]  # K x (n, P), 0/1
    a_eta: list[np.ndarray]  # K x (n, P)
    a_over: np.ndarray
    a_node: np.ndarray
    has_eta: np.ndarray  # (n, K) bool


def design(rows: Sequence[Obs], prior: Prior | None = None, cpu_ref: str = "ort", gpu_ref: str = "ort-trt",
           tau: float = TAU_INIT) -> Design:
    """Build the design matrices of `rows` (parameters are added to `prior` as they are met)."""
    pr = prior or Prior()
    n, kk = len(rows), len(WORK_CLASSES)
    logbase = np.zeros((n, kk))
    work = np.zeros((n, kk))
    eff_ij: list[list[tuple[int, int]]] = [[] for _ in range(kk)]
    eta_ij: list[list[tuple[int, int]]] = [[] for _ in range(kk)]
    over_ij: list[tuple[int, int]] = []
    node_ij: list[tuple[int, int]] = []
    has_eta = np.zeros((n, kk), dtype=bool)
    for i, o in enumerate(rows):
        eff, eta, over, node = _row_terms(o, pr, cpu_ref if o.path == "cpu" else gpu_ref, tau)
        for j, k in enumerate(WORK_CLASSES):
            peak = o.peaks["memory"] if k == "memory" else o.peaks[o.precision]
            logbase[i, j] = math.log(peak)
            work[i, j] = o.work.work.get(k, 0.0)
            eff_ij[j] += [(i, t) for t in eff[j]]
            if eta[j]:
                eta_ij[j] += [(i, t) for t in eta[j]]
                has_eta[i, j] = True
        over_ij += [(i, t) for t in over]
        node_ij += [(i, t) for t in node]

    def mat(ij: list[tuple[int, int]]) -> np.ndarray:
        m = np.zeros((n, len(pr.names)))
        for r, c in ij:
            m[r, c] += 1.0
        return m

    return Design(pr, logbase, work, np.array([o.work.nodes for o in rows], float),
                  np.array([o.threads for o in rows], float), [mat(x) for x in eff_ij], [mat(x) for x in eta_ij],
                  mat(over_ij), mat(node_ij), has_eta)


def _pad(a: np.ndarray, p: int) -> np.ndarray:
    if a.shape[1] == p:
        return a
    return np.hstack([a, np.zeros((a.shape[0], p - a.shape[1]))])


def predict_terms(d: Design, theta: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Predicted latency (ms) of each row and its parts (overhead, nodes, per class)."""
    p = theta.size
    over = np.exp(_pad(d.a_over, p) @ theta)
    node = d.nodes * np.exp(_pad(d.a_node, p) @ theta) / 1000.0
    parts = {"overhead": over, "nodes": node}
    total = over + node
    for j, k in enumerate(WORK_CLASSES):
        rate = np.exp(d.logbase[:, j] + _pad(d.a_eff[j], p) @ theta)
        eta = 1.0 / (1.0 + np.exp(-(_pad(d.a_eta[j], p) @ theta)))
        s = np.where(d.has_eta[:, j], 1.0 + (d.threads - 1.0) * eta, 1.0)
        t = d.work[:, j] / rate * 1000.0 / s
        parts[k] = t
        total = total + t
    return total, parts


def _jacobian(d: Design, theta: np.ndarray) -> np.ndarray:
    """d log(t) / d theta for every row (dense)."""
    total, parts = predict_terms(d, theta)
    jac = d.a_over * parts["overhead"][:, None] + d.a_node * parts["nodes"][:, None]
    for j, k in enumerate(WORK_CLASSES):
        t = parts[k]
        jac -= d.a_eff[j] * t[:, None]
        eta = 1.0 / (1.0 + np.exp(-(d.a_eta[j] @ theta)))
        s = np.where(d.has_eta[:, j], 1.0 + (d.threads - 1.0) * eta, 1.0)
        ds = (d.threads - 1.0) * eta * (1.0 - eta) / s
        jac -= d.a_eta[j] * (t * ds)[:, None]
    return jac / total[:, None]


@dataclass
class FitResult:
    """Fitted parameters (name -> value), their prior, and how many rows informed the fit."""

    theta: np.ndarray
    prior: Prior
    n_rows: int
    cost: float
    tau: float = TAU_INIT
    """Between-benchmark spread (log sd) the fit used, estimated from the rows (`estimate_tau`)."""

    def value(self, name: str) -> float | None:
        i = self.prior.index.get(name)
        return None if i is None else float(self.theta[i])


def _fit_once(rows: Sequence[Obs], sigma: float, tau: float) -> FitResult:
    d = design(rows, tau=tau)
    pr = d.prior
    mean, sd = np.array(pr.mean), np.array(pr.sd)
    y = np.log(np.array([o.latency_ms for o in rows]))

    def resid(th: np.ndarray) -> np.ndarray:
        t, _ = predict_terms(d, th)
        return np.concatenate([(np.log(t) - y) / sigma, (th - mean) / sd])

    def jac(th: np.ndarray) -> np.ndarray:
        return np.vstack([_jacobian(d, th) / sigma, np.diag(1.0 / sd)])

    res = least_squares(resid, mean.copy(), jac=jac, method="lm", xtol=1e-6, ftol=1e-6)
    return FitResult(res.x, pr, len(rows), float(res.cost), tau)


def estimate_tau(result: FitResult, rows: Sequence[Obs], sigma: float = SIGMA_OBS) -> float:
    """Between-benchmark spread from the fitted benchmark effects (moment estimate corrected for shrinkage).

    A benchmark effect of a benchmark with n rows is shrunk by ``tau^2 / (tau^2 + sigma^2 / n)``; the
    mean squared fitted effect over benchmarks with at least `BENCH_MIN_ROWS` rows, divided by the mean
    shrinkage, estimates tau^2."""
    counts: dict[str, int] = {}
    for o in rows:
        if o.bench:
            counts[o.bench] = counts.get(o.bench, 0) + 1
    b2, lam = [], []
    for bench, n in counts.items():
        v = result.value(f"bench.{bench}")
        if v is None or n < BENCH_MIN_ROWS:
            continue
        b2.append(v * v)
        lam.append(result.tau ** 2 / (result.tau ** 2 + sigma ** 2 / n))
    if not b2:
        return result.tau
    return float(min(max(math.sqrt(np.mean(b2) / np.mean(lam)), 0.05), 1.0))


def fit(rows: Sequence[Obs], sigma: float = SIGMA_OBS, tau: float | None = None, iterations: int = 2) -> FitResult:
    """Fit every parameter the rows touch, regularised toward its prior (module docstring).

    With `tau` None the between-benchmark spread is estimated from the rows (`iterations` rounds of
    fit -> `estimate_tau` -> refit); otherwise it is fixed."""
    if tau is not None:
        return _fit_once(rows, sigma, tau)
    res = _fit_once(rows, sigma, TAU_INIT)
    for _ in range(iterations - 1):
        t = estimate_tau(res, rows, sigma)
        if abs(t - res.tau) < 0.01:
            break
        res = _fit_once(rows, sigma, t)
    return res


LEVELS = ("benchmark", "runtime")
"""Prediction levels: ``benchmark`` adds the fitted effect of the row's benchmark when the fit saw it;
``runtime`` leaves every benchmark effect at zero (what a new setup, e.g. a user's, gets)."""


def predict(result: FitResult, rows: Sequence[Obs], level: str = "benchmark") -> np.ndarray:
    """Predicted latency (ms) of `rows` with a fitted result; unseen parameters sit at their prior."""
    pr = Prior(list(result.prior.names), list(result.prior.mean), list(result.prior.sd), dict(result.prior.index))
    d = design(rows, pr, tau=result.tau)
    theta = np.concatenate([result.theta, np.array(pr.mean[len(result.theta):])])
    if level == "runtime":
        theta = np.where([n.startswith("bench.") for n in pr.names], 0.0, theta)
    t, _ = predict_terms(d, theta)
    return t


# --- leave-one-family-out ------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """A row predicted by a fit that never saw its family."""

    obs: Obs
    predicted_ms: float
    runtime_seen: bool = True
    """False when no training row had this runtime (on this path, ISA and precision): the row then
    tests an unseen runtime, not an unseen family, and is reported apart."""
    runtime_level_ms: float = math.nan
    """The same prediction at the runtime level (no benchmark effect): what a new setup gets."""

    @property
    def log_error(self) -> float:
        return math.log(self.predicted_ms / self.obs.latency_ms)


def runtime_view(held: Sequence[Held]) -> list[Held]:
    """The held-out predictions at the runtime level (benchmark effects left out)."""
    return [replace(h, predicted_ms=h.runtime_level_ms) for h in held]


def lofo(rows: Sequence[Obs], families: Iterable[str] | None = None,
         progress: Callable[[str], None] | None = None, tau: float | None = None) -> list[Held]:
    """Refit with each family held out and predict it (only the given families, default all).

    Each held-out row is predicted at both levels (`LEVELS`): with the effect of its benchmark as
    learned from the other families of that benchmark, and at the runtime level."""
    fams = sorted(set(families) if families is not None else {o.family for o in rows})
    out: list[Held] = []
    for i, fam in enumerate(fams):
        test = [o for o in rows if o.family == fam]
        train = [o for o in rows if o.family != fam]
        if not test or not train:
            continue
        if progress:
            progress(f"leave-one-family-out {i + 1}/{len(fams)}: {fam} ({len(test)} rows)")
        res = fit(train, tau=tau)
        seen = {runtime_key(o) for o in train}
        both = zip(test, predict(res, test), predict(res, test, level="runtime"), strict=True)
        out += [Held(o, float(p), runtime_key(o) in seen or o.runtime in REFERENCE_RUNTIMES, float(r))
                for o, p, r in both]
    return out


REFERENCE_RUNTIMES = ("ort", "ort-trt")


def runtime_key(o: Obs) -> tuple[str, str, str, str]:
    """What a runtime factor is fitted for: runtime, path, ISA, precision."""
    return (o.runtime, o.path, o.isa, o.precision if o.path == "cpu" else "")


BAND_QUANTILE = 0.85
"""Quantile of held-out |log error| that sets a band (coverage target: 80 %)."""
MIN_BAND_ROWS = 8


def band_key(o: Obs) -> str:
    """The band a row belongs to: ``<device>/<path>-<precision>`` (GPU fp16/fp32 together)."""
    return f"{o.device}/{o.path}-{o.precision}" if o.path == "cpu" else f"{o.device}/gpu"


def _kind(key: str) -> str:
    return key.split("/", 1)[1]


def band_of(errors: Sequence[float], quantile: float = BAND_QUANTILE) -> float:
    """Relative half-width b of ``[t/(1+b), t(1+b)]`` covering `quantile` of the |log errors|."""
    return math.exp(float(np.quantile(np.abs(errors), quantile))) - 1.0 if len(errors) else math.nan


def bands_from_errors(held: Sequence[Held], exclude_family: str | None = None) -> dict[str, float]:
    """Band per device/path from held-out errors (another family's when `exclude_family` is set);
    groups with fewer than `MIN_BAND_ROWS` errors take the band of their path over all devices."""
    by: dict[str, list[float]] = {}
    kind: dict[str, list[float]] = {}
    for h in held:
        if h.obs.family == exclude_family or not h.runtime_seen:
            continue
        k = band_key(h.obs)
        by.setdefault(k, []).append(h.log_error)
        kind.setdefault(_kind(k), []).append(h.log_error)
    keys = {band_key(h.obs) for h in held}
    out = {}
    for k in keys:
        e = by.get(k, [])
        if len(e) < MIN_BAND_ROWS:
            e = e + kind.get(_kind(k), [])
        out[k] = band_of(e)
    return out


def figures(held: Sequence[Held], nested_bands: bool = True) -> dict[str, dict[str, float]]:
    """Per device/path: n, median |error|, share within ±25/30 %, coverage, Spearman rho.

    Rows whose runtime no training row had (`Held.runtime_seen` False) are counted apart
    (``unseen_runtime_rows``): the product predicts ONNX Runtime, which is always seen.

    Coverage uses, for each row, the band computed without its own family (nested), so a family
    never sets the interval it is judged by."""
    fams = {h.obs.family for h in held}
    nested = {f: bands_from_errors(held, exclude_family=f) for f in fams} if nested_bands else {}
    flat = bands_from_errors(held)
    by: dict[str, list[Held]] = {}
    unseen: dict[str, int] = {}
    for h in held:
        if h.runtime_seen:
            by.setdefault(band_key(h.obs), []).append(h)
        else:
            unseen[band_key(h.obs)] = unseen.get(band_key(h.obs), 0) + 1
    out = {}
    for k, hs in sorted(by.items()):
        rel = np.array([h.predicted_ms / h.obs.latency_ms - 1.0 for h in hs])
        cover = []
        for h in hs:
            b = (nested[h.obs.family] if nested_bands else flat).get(k, math.nan)
            lo, hi = h.predicted_ms / (1 + b), h.predicted_ms * (1 + b)
            cover.append(lo <= h.obs.latency_ms <= hi)
        pairs = ([h.predicted_ms for h in hs], [h.obs.latency_ms for h in hs])
        rho = spearmanr(*pairs).statistic if len(hs) > 2 else math.nan
        out[k] = {
            "n": float(len(hs)),
            "families": float(len({h.obs.family for h in hs})),
            "median_abs_err": float(np.median(np.abs(rel))),
            "within_25": float(np.mean(np.abs(rel) <= 0.25)),
            "within_30": float(np.mean(np.abs(rel) <= 0.30)),
            "coverage": float(np.mean(cover)),
            "band": float(flat.get(k, math.nan)),
            "spearman_rho": float(rho),
            "unseen_runtime_rows": float(unseen.get(k, 0)),
        }
    return out


__all__ = [
    "BAND_QUANTILE",
    "Design",
    "FitResult",
    "Held",
    "Obs",
    "Prior",
    "band_key",
    "band_of",
    "bands_from_errors",
    "design",
    "figures",
    "fit",
    "lofo",
    "predict",
    "predict_terms",
]
