"""Evaluation data for bring-your-own-model tasks: an `.npz` of inputs or a folder of images.

`.npz`: one array per model input, named like the input, samples along axis 0; an optional
`labels` array (class indices of shape (N,) for top-1/top-5, or targets shaped like the model's
first output for mean absolute error). A folder: either class sub-folders (`cat/1.jpg`; labels are
the sorted folder index) or images directly inside (no labels), turned into one float32 NCHW (or
NHWC) input by a `Preprocess` spec: resize the shorter side, centre-crop, scale, normalise.

`load_data` is called when a task is created and once per input resolution; the result is cached
per process by file content, so trials never re-read the data.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edge_search.errors import InputError
from edge_search.schema import StrictModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")
LABELS_KEY = "labels"


class Preprocess(StrictModel):
    """How a folder of images becomes one model input (torchvision's ImageNet recipe by default)."""

    resolution: int = Field(224, ge=8)
    """Side of the centre crop fed to the model (overridden by the `input_resolution` knob)."""
    resize: float = Field(256 / 224, ge=1.0)
    """The shorter side is first resized to `resize * resolution` (1.0: no extra margin to crop)."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1 / 255
    """Pixels are multiplied by `scale` before `mean`/`std` are applied."""
    layout: Literal["nchw", "nhwc"] = "nchw"
    grayscale: bool = False


@dataclass(frozen=True)
class EvalData:
    """Model inputs (name -> array with samples along axis 0) and optional labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    """Where it came from (for error messages)."""

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples `start:stop` of every input, as contiguous arrays (an ONNX Runtime feed)."""
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in self.inputs.items()}


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted file names and contents."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_data(path: Path, *, image_input: str | None, preprocess: Preprocess,
              resolution: int | None = None, layout: Literal["nchw", "nhwc"] = "nchw") -> EvalData:
    """Load `.npz` or image-folder data, resized to `resolution` when it is given.

    `image_input` names the model input an image folder feeds (its only image input). For `.npz`
    data, `resolution` resizes every 4-D float input (bilinear, `layout` says where H and W are).
    Raises `InputError` for a missing or unreadable file, an empty folder, or ragged arrays.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such data file or folder")
    return _load_cached(path.resolve(), file_digest(path), image_input, preprocess, resolution, layout)


@functools.lru_cache(maxsize=8)
def _load_cached(path: Path, digest: str, image_input: str | None, preprocess: Preprocess,
                 resolution: int | None, layout: Literal["nchw", "nhwc"]) -> EvalData:
    del digest  # part of the cache key only: a changed file is read again
    if path.is_dir():
        if image_input is None:
            raise InputError(f"{path}: an image folder feeds a model with exactly one input")
        return _load_images(path, image_input, preprocess, resolution)
    data = _load_npz(path)
    if resolution is not None:
        inputs = {k: resize_array(v, resolution, layout) if v.ndim == 4 and v.dtype.kind == "f" else v
                  for k, v in data.inputs.items()}
        data = EvalData(inputs, data.labels, data.source)
    return data


def _load_npz(path: Path) -> EvalData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from None
    labels = arrays.pop(LABELS_KEY, None)
    if not arrays:
        raise InputError(f"{path}: holds no input arrays (only '{LABELS_KEY}' or nothing)")
    sizes = {k: (len(v) if v.ndim else 0) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise InputError(f"{path}: inputs need the same number of samples along axis 0, got {sizes}")
    n = next(iter(sizes.values()))
    if labels is not None and (labels.ndim == 0 or len(labels) != n):
        raise InputError(f"{path}: '{LABELS_KEY}' has shape {labels.shape}, "
                         f"expected {n} samples along axis 0")
    for arr in arrays.values():
        arr.setflags(write=False)
    return EvalData(arrays, labels, str(path))


def _load_images(folder: Path, input_name: str, pre: Preprocess, resolution: int | None) -> EvalData:
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes:
        items = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        items = [(f, -1) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its class folders")
    side = resolution or pre.resolution
    short = round(side * pre.resize)
    images: list[np.ndarray] = []
    for f, _ in items:
        try:
            with Image.open(f) as opened:
                img = opened.convert("L" if pre.grayscale else "RGB")
            w, h = img.size
            k = short / min(w, h)
            img = img.resize((max(side, round(w * k)), max(side, round(h * k))), Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - side) // 2, (h - side) // 2
            pixels = np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.float32)
        except OSError as err:
            raise InputError(f"{f}: not a readable image ({err})") from None
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        channels = pixels.shape[-1]
        mean = np.asarray(pre.mean[:channels], np.float32)
        std = np.asarray(pre.std[:channels], np.float32)
        arr = ((pixels * np.float32(pre.scale) - mean) / std).astype(np.float32)
        images.append(arr if pre.layout == "nhwc" else arr.transpose(2, 0, 1))
    x = np.stack(images).astype(np.float32)
    x.setflags(write=False)
    labels = np.asarray([c for _, c in items], dtype=np.int64) if classes else None
    return EvalData({input_name: x}, labels, str(folder))


def resize_array(x: np.ndarray, side: int, layout: Literal["nchw", "nhwc"] = "nchw") -> np.ndarray:
    """Bilinear resize (half-pixel centres, like PIL and torch's align_corners=False) to side x side."""
    h_ax, w_ax = (2, 3) if layout == "nchw" else (1, 2)
    if x.shape[h_ax] == side and x.shape[w_ax] == side:
        return x
    out = x.astype(np.float32)
    for axis in (h_ax, w_ax):
        n = out.shape[axis]
        pos = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = side
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    out = out.astype(x.dtype)
    out.setflags(write=False)
    return out
