"""torchvision state dicts -> the project's variables, saved as a checkpoint.

  python -m maskrcnn_jax.weights.convert_torchvision --input resnet101-cd907fc2.pth \
      --output /ckpt/r101_imagenet
  python -m maskrcnn_jax.weights.convert_torchvision \
      --input maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output /ckpt/maskrcnn_r50_coco

Two layouts are read: an ImageNet ResNet (`conv1.weight`, `layer1.0.conv1.weight`, ...;
`fc.*` dropped), which gives `backbone` variables only, and torchvision's Mask R-CNN
(`backbone.body.*`, `backbone.fpn.*`, `rpn.head.*`, `roi_heads.*`, ResNet-50 or any other
depth), which gives every part. The ResNet depth follows from the blocks per stage.
Both the current torchvision key names and those of the v1 checkpoints
(`inner_blocks.0.weight`, `rpn.head.conv.weight`, `mask_head.mask_fcn1.weight`) are read.
Every key must be used: anything left over fails the conversion.

The result is `{"params": ..., "frozen_bn": ...}` with the module paths of
`maskrcnn_jax.models` (its docstring), written so that
`maskrcnn_jax.weights.checkpoint.load_variables(OUTPUT)` reads it back, and
OUTPUT/metadata.json (`metadata`): a 91-way classifier is torchvision's COCO layout, which
`maskrcnn_jax.weights.load` maps onto a class set such as `coco`. `.pth` files (torch's zip or
legacy format) are untrusted and read without torch, as numeric arrays only
(`maskrcnn_jax.weights.unpickle`); `.npz` files of the same keys are read too. A file the
converter cannot use ends it with one line naming the file, and exit code 1.
"""

import re
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from maskrcnn_jax.models import resnet
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import options
from maskrcnn_jax.weights import unpickle

FLAGS = flags.FLAGS
Variables = dict[str, Any]

# Keys of older torchvision checkpoints -> the current names.
_RENAMES = (
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"),
     r"backbone.fpn.\1_blocks.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
)
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch conv weight [out, in, kh, kw] -> flax kernel [kh, kw, in, out]."""
  if w.ndim != 4:
    raise ValueError(f"a conv weight must be [out, in, kh, kw], got shape {w.shape}")
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """torch linear weight [out, in] -> flax kernel [in, out]."""
  if w.ndim != 2:
    raise ValueError(f"a linear weight must be [out, in], got shape {w.shape}")
  return np.ascontiguousarray(w.T)


def deconv_kernel(w: np.ndarray) -> np.ndarray:
  """torch ConvTranspose2d weight [in, out, kh, kw] -> flax ConvTranspose kernel.

  flax's ConvTranspose (transpose_kernel=False) correlates the dilated input with the
  kernel, torch scatters it: the spatial axes flip. Result [kh, kw, in, out].
  """
  if w.ndim != 4:
    raise ValueError(f"a transposed conv weight must be [in, out, kh, kw], got {w.shape}")
  return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))


class _Reader:
  """Takes keys out of a state dict; `check_done` fails on whatever is left."""

  def __init__(self, state: Mapping[str, np.ndarray]):
    self.state = {}
    for key, value in state.items():
      for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
      self.state[key] = np.asarray(value)
    self.used = set()

  def has(self, key: str) -> bool:
    return key in self.state

  def take(self, key: str) -> np.ndarray:
    if key not in self.state:
      raise ValueError(f"state dict has no key {key!r}")
    self.used.add(key)
    return self.state[key].astype(np.float32)

  def conv(self, prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
    out = {"kernel": conv_kernel(self.take(f"{prefix}.weight"))}
    if bias:
      out["bias"] = self.take(f"{prefix}.bias")
    return out

  def dense(self, prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": dense_kernel(self.take(f"{prefix}.weight")),
            "bias": self.take(f"{prefix}.bias")}

  def bn(self, prefix: str) -> dict[str, np.ndarray]:
    self.used.add(f"{prefix}.num_batches_tracked")  # BatchNorm2d's counter, unused.
    return {ours: self.take(f"{prefix}.{theirs}") for ours, theirs in _BN.items()}

  def check_done(self, ignore: str | None = None):
    left = sorted(k for k in self.state if k not in self.used
                  and not (ignore and re.match(ignore, k)))
    if left:
      raise ValueError(f"{len(left)} state dict keys have no place in the model: "
                       f"{', '.join(left[:20])}{' ...' if len(left) > 20 else ''}")


def _stage_blocks(state: Mapping[str, Any], prefix: str) -> tuple[int, ...]:
  counts = []
  for layer in range(1, 5):
    pattern = re.compile(rf"^{re.escape(prefix)}layer{layer}\.(\d+)\.")
    blocks = {int(m[1]) for k in state if (m := pattern.match(k))}
    counts.append(len(blocks))
  return tuple(counts)


def infer_depth(state: Mapping[str, Any], prefix: str = "") -> int:
  """ResNet depth from the blocks per stage and the block type (bottlenecks have conv3)."""
  counts = _stage_blocks(state, prefix)
  bottleneck = f"{prefix}layer1.0.conv3.weight" in state
  for depth, (block, spec) in resnet.SPECS.items():
    if spec == counts and (block is resnet.Bottleneck) == bottleneck:
      return depth
  kind = "bottleneck" if bottleneck else "basic"
  raise ValueError(f"no ResNet depth has {counts} {kind} blocks per stage "
                   f"(keys under {prefix!r})")


def _convert_resnet(reader: _Reader, prefix: str, depth: int) -> tuple[Variables, Variables]:
  params = {"stem": {"conv1": reader.conv(f"{prefix}conv1", bias=False)}}
  frozen = {"stem": {"bn1": reader.bn(f"{prefix}bn1")}}
  block, counts = resnet.SPECS[depth]
  num_convs = 3 if block is resnet.Bottleneck else 2
  for layer, count in enumerate(counts, 1):
    stage_params, stage_frozen = {}, {}
    for i in range(count):
      src = f"{prefix}layer{layer}.{i}"
      p, f = {}, {}
      for j in range(1, num_convs + 1):
        p[f"conv{j}"] = reader.conv(f"{src}.conv{j}", bias=False)
        f[f"bn{j}"] = reader.bn(f"{src}.bn{j}")
      if reader.has(f"{src}.downsample.0.weight"):
        p["downsample_conv"] = reader.conv(f"{src}.downsample.0", bias=False)
        f["downsample_bn"] = reader.bn(f"{src}.downsample.1")
      stage_params[f"block{i}"], stage_frozen[f"block{i}"] = p, f
    params[f"res{layer + 1}"], frozen[f"res{layer + 1}"] = stage_params, stage_frozen
  return params, frozen


def is_mask_rcnn(state: Mapping[str, Any]) -> bool:
  return any(k.startswith("backbone.body.") for k in state)


def convert(state: Mapping[str, np.ndarray], *, depth: int | None = None) -> Variables:
  """A torchvision state dict (ImageNet ResNet or Mask R-CNN) -> the project's variables.

  Args:
    state: key -> array in torch's layout (numpy or anything `np.asarray` takes).
    depth: the expected ResNet depth; None accepts the one the keys show.

  Returns:
    {"params": {...}, "frozen_bn": {"backbone": ...}}: `params` has `backbone` only for an
    ImageNet ResNet, also `fpn`, `rpn` and `roi_heads` for a Mask R-CNN. float32 numpy.

  Raises:
    ValueError: unknown layout, depth other than `depth`, or keys left unused.
  """
  reader = _Reader(state)
  prefix = "backbone.body." if is_mask_rcnn(reader.state) else ""
  if f"{prefix}conv1.weight" not in reader.state:
    raise ValueError("not a torchvision ResNet or Mask R-CNN state dict: no "
                     f"{prefix}conv1.weight among {len(reader.state)} keys")
  found = infer_depth(reader.state, prefix)
  if depth is not None and depth != found:
    raise ValueError(f"the state dict holds a ResNet-{found}, not ResNet-{depth}")
  backbone, backbone_bn = _convert_resnet(reader, prefix, found)
  params = {"backbone": backbone}
  if not prefix:
    reader.check_done(ignore=r"^fc\.")
    return {"params": params, "frozen_bn": {"backbone": backbone_bn}}

  params["fpn"] = {}
  for i in range(4):
    params["fpn"][f"lateral{i + 2}"] = reader.conv(f"backbone.fpn.inner_blocks.{i}.0")
    params["fpn"][f"output{i + 2}"] = reader.conv(f"backbone.fpn.layer_blocks.{i}.0")
  params["rpn"] = {"head": {"conv": reader.conv("rpn.head.conv.0.0"),
                            "cls_logits": reader.conv("rpn.head.cls_logits"),
                            "bbox_pred": reader.conv("rpn.head.bbox_pred")}}
  box_head = {name: reader.dense(f"roi_heads.box_head.{name}") for name in ("fc6", "fc7")}
  for name in ("cls_score", "bbox_pred"):
    box_head[name] = reader.dense(f"roi_heads.box_predictor.{name}")
  mask_head = {}
  i = 0
  while reader.has(f"roi_heads.mask_head.{i}.0.weight"):
    mask_head[f"mask_conv{i + 1}"] = reader.conv(f"roi_heads.mask_head.{i}.0")
    i += 1
  mask_head["deconv"] = {
      "kernel": deconv_kernel(reader.take("roi_heads.mask_predictor.conv5_mask.weight")),
      "bias": reader.take("roi_heads.mask_predictor.conv5_mask.bias")}
  mask_head["mask_logits"] = reader.conv("roi_heads.mask_predictor.mask_fcn_logits")
  params["roi_heads"] = {"box_head": box_head, "mask_head": mask_head}
  reader.check_done()
  return {"params": params, "frozen_bn": {"backbone": backbone_bn}}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A `.pth` (torch's zip or legacy format, read without torch) or `.npz` state dict as
  numpy arrays.

  Raises:
    unpickle.WeightFileError: one line naming `path` (`maskrcnn_jax.weights.unpickle`).
  """
  if path.endswith(".npz"):
    try:
      with np.load(path) as data:  # allow_pickle=False: numeric arrays only.
        return {k: data[k] for k in data.files}
    except Exception as e:  # pylint: disable=broad-except; any failure on untrusted bytes.
      raise unpickle.WeightFileError(f"{path}: not a readable .npz ({e})") from None
  state = unpickle.read(path)
  if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
    state = state["model"]  # torchvision's reference training scripts wrap it.
  if not isinstance(state, Mapping):
    raise unpickle.WeightFileError(f"{path} holds a {type(state).__name__}, not a state dict")
  return {k: np.asarray(v) for k, v in state.items()}


def summary(variables: Variables) -> str:
  """One line: parameter count and parts."""
  params = variables["params"]
  count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  return f"{count / 1e6:.2f}M parameters in {', '.join(params)}"


def metadata(variables: Variables, input_path: str) -> dict[str, Any]:
  """What OUTPUT/metadata.json records: the source file, torchvision's model options
  (`maskrcnn_jax.weights.options`) and, for torchvision's 91-way COCO classifier,
  `classifier_layout` `torchvision91` (`maskrcnn_jax.weights.load`)."""
  out = {"converted_from": input_path, "converter": "convert_torchvision",
         **options.TORCHVISION}
  heads = variables["params"].get("roi_heads")
  if heads is not None and heads["box_head"]["cls_score"]["bias"].shape == (91,):
    out["classifier_layout"] = "torchvision91"
  return out


def convert_file(input_path: str, output_dir: str, *, depth: int | None = None) -> Variables:
  """Converts the state dict at `input_path` and writes it as a checkpoint `output_dir`."""
  variables = convert(read_state_dict(input_path), depth=depth)
  checkpoint.save_variables(output_dir, variables, metadata(variables, input_path))
  logging.info("wrote %s (%s)", output_dir, summary(variables))
  return variables


def run_cli(convert_file, input_path: str, output_dir: str, *, depth: int | None) -> None:
  """A converter's command line: `convert_file`; any error in the weights or the paths
  exits with code 1 and one line naming the input, no traceback."""
  try:
    convert_file(input_path, output_dir, depth=depth)
  except (ValueError, OSError) as e:
    message = " ".join(str(e).split())
    sys.exit(message if input_path in message else f"{input_path}: {message}")


def main(argv):
  del argv
  run_cli(convert_file, FLAGS.input, FLAGS.output, depth=FLAGS.depth)


if __name__ == "__main__":
  # Defined here, not on import, so that importing the module defines no global flags.
  flags.DEFINE_string("input", None, "torchvision state dict (.pth, or .npz).", required=True)
  flags.DEFINE_string("output", None, "Checkpoint directory to write.", required=True)
  flags.DEFINE_integer("depth", None, "Expected ResNet depth; default: inferred.")
  app.run(main)
