"""`digits-cnn`: a small PyTorch CNN on scikit-learn's UCI digits (8x8 grayscale, 10 classes).

Training, structured/unstructured pruning and fine-tuning run in PyTorch; quality is always
measured on the exported ONNX model with ONNX Runtime, on a held-out test split that training
never sees. The split is fixed by `SPLIT_SEED`, independent of the trial seed, so every trial is
scored on the same test samples.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edge_search.tasks.base import EpochCallback, ModelArtifact, Task, TrainingStopped

SPLIT_SEED = 20240611
"""Seed of the train/validation/test split; fixed so all trials share one test set."""
BASE_CHANNELS = (16, 32, 32, 64)
"""Output channels of conv blocks 1..4 at width 1.0."""
POOL_AFTER = (0, 2)
"""Zero-based block indices followed by a 2x2 MaxPool: 8x8 -> 4x4 (block 1) -> 2x2 (block 3)."""
FINETUNE_LR_FACTOR = 0.1
"""Fine-tuning after pruning uses this share of the training learning rate."""
TRAIN_THREADS = 1
"""Torch intra-op threads while training: the model is tiny, so one thread is as fast as two, keeps
results bit-reproducible, and leaves the other core to a concurrent trial or measurement."""
OPSET = 17
EVAL_THREADS = 1


@dataclass(frozen=True)
class DigitsSplits:
    """The fixed 60/20/20 stratified split, inputs as float32 NCHW in [0, 1], labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.cache
def load_splits() -> DigitsSplits:
    """Load UCI digits once per process and split it (stratified, seeded by `SPLIT_SEED`)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SPLIT_SEED)
    splits = DigitsSplits(x_train, y_train, x_val, y_val, x_test, y_test)
    for arr in (splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test, splits.y_test):
        arr.setflags(write=False)
    return splits


def channels_for(width: float, depth: int) -> list[int]:
    """Conv output channels for a width multiplier and a depth of 1..4 blocks."""
    if not 1 <= depth <= len(BASE_CHANNELS):
        raise ValueError(f"depth must be 1..{len(BASE_CHANNELS)}, got {depth}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(1, round(c * width)) for c in BASE_CHANNELS[:depth]]


class DigitsNet(nn.Module):
    """conv3x3+BN+ReLU blocks (MaxPool after blocks in `POOL_AFTER`), flatten, linear classifier."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = list(channels)
        blocks: list[nn.Module] = []
        in_ch, side = 1, 8
        for i, out_ch in enumerate(self.channels):
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(out_ch), nn.ReLU()]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.spatial = side * side
        self.classifier = nn.Linear(in_ch * self.spatial, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(x, 1))

    def convs(self) -> list[nn.Conv2d]:
        return [block[0] for block in self.blocks]  # type: ignore[index]

    def bns(self) -> list[nn.BatchNorm2d]:
        return [block[1] for block in self.blocks]  # type: ignore[index]


@contextlib.contextmanager
def _torch_deterministic(seed: int) -> Iterator[None]:
    """Seed torch, use deterministic kernels and `TRAIN_THREADS` threads; restore afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)  # cheap on CPU: only changes a few scatter kernels
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _fit(model: DigitsNet, splits: DigitsSplits, *, lr: float, weight_decay: float, epochs: int,
         batch_size: int, seed: int, on_epoch: EpochCallback | None = None) -> None:
    """Adam on the training split; shuffling from a generator seeded by `seed`.

    `on_epoch(epoch, val_accuracy)` is called after each epoch when given; returning False stops
    training (raises `TrainingStopped`)."""
    x = torch.from_numpy(splits.x_train.copy())
    y = torch.from_numpy(splits.y_train.copy())
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        # Plain index batches rather than a DataLoader: the whole split is one small tensor.
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        if on_epoch is not None:
            acc = _torch_accuracy(model, splits.x_val, splits.y_val)
            model.train()
            if not on_epoch(epoch + 1, acc):
                raise TrainingStopped(epoch + 1, acc)
    model.eval()


@torch.no_grad()
def _torch_accuracy(model: DigitsNet, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the PyTorch model; only for training-side metrics (validation), never the trial's."""
    model.eval()
    pred = model(torch.from_numpy(x.copy())).argmax(1).numpy()
    return float((pred == y).mean())


def _export_onnx(model: DigitsNet, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Export in eval mode (BatchNorm folded into the convs), dynamic batch; add `metadata` props."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False) takes ~0.02 s here (measured), folds BN by constant
    # folding and is byte-deterministic; the dynamo exporter took 1-2.5 s, builds opset 18 and
    # down-converts to 17, and prints progress. It is deprecated: revisit when it is removed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"], do_constant_folding=True,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, dict(metadata))
        onnx.save(proto, str(path))


def _save_checkpoint(model: DigitsNet, params: Mapping[str, Any], path: Path) -> None:
    torch.save({"state_dict": model.state_dict(), "channels": model.channels, "params": dict(params)}, path)


def _load_checkpoint(path: Path) -> tuple[DigitsNet, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsNet(ckpt["channels"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, dict(ckpt["params"])


def _channel_importance(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """L1 norm of each output filter after folding BN's scale (what the deployed conv computes)."""
    assert bn.running_var is not None  # BN is built with track_running_stats
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()
    return conv.weight.detach().abs().sum(dim=(1, 2, 3)) * scale.detach()


@torch.no_grad()
def shrink_channels(model: DigitsNet, ratio: float) -> DigitsNet:
    """A smaller `DigitsNet` keeping the ceil((1-ratio)*C) strongest channels of every conv.

    torch.nn.utils.prune.ln_structured only zeroes channels (the tensors keep their shape); here
    the network is rebuilt so the exported ONNX really has smaller convs and classifier.
    """
    if ratio <= 0:
        return model
    keeps: list[torch.Tensor] = []
    for conv, bn in zip(model.convs(), model.bns(), strict=True):
        c = conv.out_channels
        n_keep = max(1, math.ceil((1.0 - ratio) * c))
        top = torch.topk(_channel_importance(conv, bn), n_keep).indices
        keeps.append(torch.sort(top).values)
    small = DigitsNet([len(k) for k in keeps])
    prev_keep = torch.arange(1)
    pairs = zip(model.convs(), model.bns(), small.convs(), small.bns(), keeps, strict=True)
    for conv, bn, sconv, sbn, keep in pairs:
        sconv.weight.copy_(conv.weight[keep][:, prev_keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(sbn, name).copy_(getattr(bn, name)[keep])
        assert sbn.num_batches_tracked is not None and bn.num_batches_tracked is not None
        sbn.num_batches_tracked.copy_(bn.num_batches_tracked)
        prev_keep = keep
    # Flatten is channel-major: feature index = channel * spatial + position.
    cols = (prev_keep[:, None] * model.spatial + torch.arange(model.spatial)[None, :]).reshape(-1)
    small.classifier.weight.copy_(model.classifier.weight[:, cols])
    small.classifier.bias.copy_(model.classifier.bias)
    small.eval()
    return small


def _apply_magnitude_masks(model: DigitsNet, sparsity: float) -> list[nn.Conv2d | nn.Linear]:
    """Per-layer L1 unstructured pruning of conv and linear weights, masks kept as forward hooks.

    Uses torch.nn.utils.prune so the masks stay applied while fine-tuning. The amount is an
    integer count rounded up, so every layer's zero share is at least `sparsity`.
    """
    modules: list[nn.Conv2d | nn.Linear] = [*model.convs(), model.classifier]
    for module in modules:
        n = module.weight.numel()
        amount = min(n, math.ceil(sparsity * n - 1e-9))
        torch_prune.l1_unstructured(module, "weight", amount=amount)
    return modules


class DigitsCnnTask(Task):
    """Small CNN on UCI digits; trains in seconds on a CPU core, prunes and fine-tunes in PyTorch."""

    name = "digits-cnn"
    version = "1"
    train_knobs: Mapping[str, Any] = {
        "lr": 0.01, "weight_decay": 1e-4, "epochs": 10, "batch_size": 64, "width": 1.0, "depth": 2,
    }
    can_train = True

    supports_early_stop = True

    def train(self, params: Mapping[str, Any], workdir: Path, seed: int,
              on_epoch: EpochCallback | None = None) -> ModelArtifact:
        """Train with Adam for `params`; write `model.pt` and `model.onnx` under `workdir`."""
        p = self.resolve_params(params)
        splits = load_splits()
        workdir.mkdir(parents=True, exist_ok=True)
        with _torch_deterministic(seed):
            model = DigitsNet(channels_for(float(p["width"]), int(p["depth"])))
            _fit(model, splits, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]),
                 epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), seed=seed, on_epoch=on_epoch)
            val_acc = _torch_accuracy(model, splits.x_val, splits.y_val)
            ckpt, onnx_path = workdir / "model.pt", workdir / "model.onnx"
            _save_checkpoint(model, p, ckpt)
            _export_onnx(model, onnx_path)
        return ModelArtifact(onnx_path=onnx_path, checkpoint_path=ckpt, metrics={"val_accuracy": val_acc})

    def prune(self, artifact: ModelArtifact, *, sparsity: float, channel_prune: float,
              finetune_epochs: int, params: Mapping[str, Any], workdir: Path, seed: int) -> ModelArtifact:
        """Remove `channel_prune` of each conv's channels, zero `sparsity` of the weights, fine-tune.

        Writes `pruned.pt` and `pruned.onnx` under `workdir`; the zeroed weights stay zero through
        fine-tuning (masks) and BN folding at export (zero times a scale is zero).
        """
        if artifact.checkpoint_path is None:
            raise ValueError("digits-cnn prune needs the artifact's checkpoint")
        p = self.resolve_params(params)
        splits = load_splits()
        workdir.mkdir(parents=True, exist_ok=True)
        with _torch_deterministic(seed):
            model, _ = _load_checkpoint(artifact.checkpoint_path)
            model = shrink_channels(model, channel_prune)
            masked = _apply_magnitude_masks(model, sparsity) if sparsity > 0 else []
            if finetune_epochs > 0:
                _fit(model, splits, lr=float(p["lr"]) * FINETUNE_LR_FACTOR,
                     weight_decay=float(p["weight_decay"]), epochs=finetune_epochs,
                     batch_size=int(p["batch_size"]), seed=seed)
            for module in masked:
                torch_prune.remove(module, "weight")  # bake the mask into the weight
            val_acc = _torch_accuracy(model, splits.x_val, splits.y_val)
            ckpt, onnx_path = workdir / "pruned.pt", workdir / "pruned.onnx"
            _save_checkpoint(model, p, ckpt)
            _export_onnx(model, onnx_path, metadata={"edge_search.prune": json.dumps({
                "method": "torch-channel-l1-bn-scaled+magnitude-per-layer", "channel_prune": channel_prune,
                "sparsity": sparsity, "finetune_epochs": finetune_epochs, "channels": model.channels},
                sort_keys=True)})
        return ModelArtifact(onnx_path=onnx_path, checkpoint_path=ckpt, metrics={"val_accuracy": val_acc})

    def evaluate(self, onnx_path: Path, batch_size: int = 1) -> dict[str, float]:
        """Test accuracy of an ONNX model with ONNX Runtime (one thread), in chunks of `batch_size`.

        Chunks follow the deploy batch size rather than one big batch: dynamic int8 quantisation
        picks its activation scale per tensor, i.e. per batch, so a big batch would score a model
        the device never runs. The test split is 360 samples, so even batch 1 takes well under 1 s.
        A model with a fixed batch dimension is run at that batch (the last chunk padded).
        """
        splits = load_splits()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = EVAL_THREADS
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        batch_dim = inp.shape[0]
        chunk = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else max(1, batch_size)
        x, y = splits.x_test, splits.y_test
        preds: list[np.ndarray] = []
        for start in range(0, len(x), chunk):
            xb = x[start:start + chunk]
            n = len(xb)
            if n < chunk and isinstance(batch_dim, int):
                xb = np.concatenate([xb, np.zeros((chunk - n, *xb.shape[1:]), dtype=xb.dtype)])
            logits = sess.run(None, {inp.name: np.ascontiguousarray(xb)})[0]
            preds.append(np.asarray(logits)[:n].argmax(axis=1))
        return {"accuracy": float((np.concatenate(preds) == y).mean())}

    def calibration_batches(self, n: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """The first `n` training samples as `{"input": (b, 1, 8, 8)}` feeds, `batch_size` at a time."""
        x = load_splits().x_train[:max(0, n)]
        for start in range(0, len(x), max(1, batch_size)):
            yield {"input": np.ascontiguousarray(x[start:start + batch_size])}

    def input_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """`{"input": (batch_size, 1, 8, 8)}`."""
        return {"input": (batch_size, 1, 8, 8)}
