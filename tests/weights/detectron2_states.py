"""Seeded random detectron2 state dicts and test images, numpy only.

Imported by the tests and by detectron2_ref.py (which runs detectron2 in the torch venv),
so that both sides rebuild the same weights from (key, shape, seed) and only the
calibrated BatchNorm statistics travel in the golden file.
"""

import re
import zlib

import numpy as np

# Output layers scaled down: small box deltas keep boxes near their anchors / proposals;
# logits of a few units keep scores apart (no float ties at probability 1).
_SCALE = {"anchor_deltas": 0.1, "bbox_pred": 0.1, "objectness_logits": 0.05,
          "cls_score": 0.05}


def _rng(key: str, seed: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(key.encode())])


def random_value(key: str, shape, seed: int) -> np.ndarray:
  """A float32 array for the detectron2 state-dict entry `key` of `shape`.

  Conv / linear weights He-normal (output layers scaled by `_SCALE`), biases N(0, 0.1), norm scales
  U(0.5, 1.5), norm shifts N(0, 0.1), running mean 0 and var 1 (calibrated elsewhere);
  Caffe2's folded BN (`_bn_s`, `_bn_b`) as norm scales U(0.2, 0.6) (no statistics to
  calibrate: smaller scales keep the activations O(1)) and shifts.
  """
  rng, shape = _rng(key, seed), tuple(shape)
  if key.endswith("_bn_s"):
    return rng.uniform(0.2, 0.6, shape).astype(np.float32)
  if key.endswith("_bn_b"):
    return rng.normal(0.0, 0.1, shape).astype(np.float32)
  if key.endswith(".norm.running_mean"):
    return np.zeros(shape, np.float32)
  if key.endswith(".norm.running_var"):
    return np.ones(shape, np.float32)
  if key.endswith(".norm.weight"):
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if key.endswith(".bias") or key.endswith(".norm.bias"):
    return rng.normal(0.0, 0.1, shape).astype(np.float32)
  fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
  if re.search(r"\.deconv\.weight$", key):  # ConvTranspose2d [in, out, kh, kw].
    fan_in = shape[0]
  layer = key.split(".")[-2] if "." in key else key
  std = np.sqrt(2.0 / fan_in) * _SCALE.get(layer, 1.0)
  return rng.normal(0.0, std, shape).astype(np.float32)


def random_state(shapes: dict, seed: int) -> dict:
  """{key: shape} -> {key: float32 array} (`random_value` of each)."""
  return {k: random_value(k, s, seed) for k, s in shapes.items()}


def caffe2_resnet_shapes(blocks) -> dict:
  """{Caffe2 blob name: shape} of an MSRA ImageNet ResNet (`R-50.pkl`), `blocks` per stage."""
  shapes = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,),
            "fc1000_w": (1000, 2048), "fc1000_b": (1000,)}
  cin = 64
  for stage, count in enumerate(blocks, 2):
    width = 64 * 2**(stage - 2)
    for i in range(count):
      prefix = f"res{stage}_{i}_"
      convs = {"branch2a": (width, cin, 1, 1), "branch2b": (width, width, 3, 3),
               "branch2c": (4 * width, width, 1, 1)}
      if i == 0:
        convs["branch1"] = (4 * width, cin, 1, 1)
      for name, shape in convs.items():
        shapes[f"{prefix}{name}_w"] = shape
        shapes[f"{prefix}{name}_bn_s"] = shapes[f"{prefix}{name}_bn_b"] = shape[:1]
      cin = 4 * width
  return shapes


def image(height: int, width: int, seed: int) -> np.ndarray:
  """Rectangles of random colour on noise: [height, width, 3] uint8 RGB."""
  rng = np.random.default_rng(seed)
  img = rng.uniform(0, 60, (height, width, 3))
  for _ in range(12):
    x, y = rng.integers(0, width - 40), rng.integers(0, height - 40)
    w, h = rng.integers(20, width // 2), rng.integers(20, height // 2)
    img[y:y + h, x:x + w] += rng.uniform(0, 190, 3)
  return np.clip(img, 0, 255).astype(np.uint8)
