"""A small transformer encoder classifier (token ids -> class logits) and a `build` for `torch`.

Written with explicit Linear layers, so its attention and feed-forward weights export as ONNX
MatMuls: the targets of int8 dynamic and weight-only int4/int8 (MatMulNBits) quantisation.
Random (seeded) weights; LayerNorm keeps activations well scaled. Quality is fidelity to fp32.
This is a latency workload, not a quality reference: judge int8 and mixed precision on real weights
with `examples/pretrained_efficientnet_lite.py` (pretrained EfficientNet-Lite, real photos).

    task: {name: torch, options: {builder: "examples.transformer_encoder:build"}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

TRAIN_KNOBS: dict[str, Any] = {"d_model": 256, "layers": 4, "heads": 4, "ffn": 1024, "vocab": 8000,
                               "seq_len": 128, "classes": 10, "eval_samples": 64}


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and GELU feed-forward, each with a residual."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.ff(self.norm2(x))
        return out


class TransformerEncoder(nn.Module):
    """Token + learned position embeddings, `layers` encoder layers, mean-pooled linear head."""

    def __init__(self, vocab: int, seq_len: int, d: int, layers: int, heads: int, ffn: int,
                 classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq_len, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[:, :tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.head(self.norm(x).mean(dim=1))
        return out


def build(params: Mapping[str, Any]) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The `torch` task's builder: an encoder for `params` and `{"tokens": eval token ids}`."""
    p = {k: int(v) for k, v in params.items()}
    model = TransformerEncoder(p["vocab"], p["seq_len"], p["d_model"], p["layers"], p["heads"], p["ffn"],
                               p["classes"]).eval()
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, p["vocab"], size=(p["eval_samples"], p["seq_len"]), dtype=np.int64)
    return model, {"tokens": tokens}
