"""detectron2 model-zoo `.pkl` files -> the project's variables, saved as a checkpoint.

  python -m maskrcnn_jax.weights.convert_detectron2 \
      --input model_final_f10217.pkl --output /ckpt/d2_r50_fpn_coco    # mask_rcnn_R_50_FPN_3x
  python -m maskrcnn_jax.weights.convert_detectron2 \
      --input model_final_a3ec72.pkl --output /ckpt/d2_r101_fpn_coco   # mask_rcnn_R_101_FPN_3x
  python -m maskrcnn_jax.weights.convert_detectron2 --input R-101.pkl --output /ckpt/r101_msra

The files (detectron2's MODEL_ZOO.md), https://dl.fbaipublicfiles.com/detectron2/ +
  COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl
  COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x/138205316/model_final_a3ec72.pkl
  ImageNetPretrained/MSRA/R-50.pkl, ImageNetPretrained/MSRA/R-101.pkl

Two kinds of file are read, both plain pickles of numpy arrays (no torch needed):

- a detectron2 model: `{"model": {name: array}, "__author__": ...}` with detectron2's
  names (`backbone.bottom_up.res2.0.conv1.weight`, `backbone.fpn_lateral2.*`,
  `proposal_generator.rpn_head.*`, `roi_heads.{box_head, box_predictor, mask_head}.*`);
- an ImageNet backbone of detectron2's model zoo (`ImageNetPretrained/MSRA/R-50.pkl`,
  `R-101.pkl`): Caffe2 blob names (`conv1_w`, `res_conv1_bn_s`, `res2_0_branch2a_w`,
  `res2_0_branch1_bn_b`, `fc1000_w`), optionally under `"blobs"`, or the same in
  detectron2's names (`stem.conv1.norm.weight`, `res2.0.shortcut.weight`). Its BatchNorm is
  folded into `_s`/`_b`: the statistics become mean 0 and var 1, as detectron2 loads these
  files (FrozenBatchNorm2d then divides by sqrt(1 + eps), eps 1e-5).

The names are mapped onto torchvision's and converted by `convert_torchvision.convert`
(every key must be used). A `.pkl` is untrusted: `read_pickle` reads only numeric arrays,
dicts, lists and scalars (`maskrcnn_jax.weights.unpickle`). The 81-way classifier keeps
detectron2's layout (the 80 COCO thing classes, then background; box deltas and mask
logits without a background row), recorded as `classifier_layout: detectron2_81` in
OUTPUT/metadata.json, which `maskrcnn_jax.weights.load` maps onto a class set such as `coco`.
A file the converter cannot use ends it with one line naming the file, and exit code 1.

How detectron2's COCO-InstanceSegmentation/mask_rcnn_R_{50,101}_FPN_3x (Base-RCNN-FPN.yaml
over config/defaults.py) differs from torchvision's Mask R-CNN, the model's defaults, and
the `config.model` value that reproduces it (configs/detectron2_r101_fpn.py):

  inference
  - ResNet bottlenecks stride in the first 1x1 conv (STRIDE_IN_1X1): `stride_in_1x1=True`.
  - BGR input, PIXEL_MEAN (103.530, 116.280, 123.675), PIXEL_STD (1, 1, 1):
    `input_format="BGR"`, `pixel_mean`/`pixel_std` in BGR order.
  - Anchors are not rounded (DefaultAnchorGenerator, OFFSET 0): `round_anchors=False`.
  - RPN: proposals kept if width and height > 0 (MIN_SIZE 0; torchvision >= 1e-3):
    `rpn.min_size=1e-7` (float32 pixel coordinates have no width in (0, 1e-7) in practice).
    Proposals are ranked by logit there, by sigmoid in torchvision (probabilities tie at 1
    above a logit of ~17; only the order across levels, and so the post-NMS cut, can
    change): `rpn.nms_on_logits=True`.
  - Box head: no small-box removal before NMS (torchvision drops width or height < 1e-2):
    `roi_heads.min_size=0`.
  - RoIAlign: POOLER_SAMPLING_RATIO 0, i.e. adaptive ceil(box side / bins) samples per bin
    (torchvision 2, the model's default): `roi_heads.sampling_ratio=0`, static shapes cap
    it at `roi_heads.max_sampling_ratio` (8; the detections count the capped boxes,
    `num_capped_rois`). aligned=True (ROIAlignV2), as the model's default; torchvision False.
  - Background is the last class logit; no background box deltas or mask logits: the
    checkpoint's `classifier_layout`, mapped at load time.
  - The same: FPN sum fusion, nearest 2x top-down upsampling, P6 = max-pool(P5, 1, stride 2);
    RPN 3x3 conv + ReLU head, 1000 pre-NMS boxes per level and 1000 post-NMS per image
    (test), NMS 0.7 per level; box weights (10, 10, 5, 5), scale clamp log(1000 / 16);
    score threshold 0.05, class-wise NMS 0.5, 100 detections; 4 mask convs, deconv,
    class-specific sigmoid masks; FrozenBN eps 1e-5. Padding is with 0 after normalisation.
  - Level assignment: floor(4 + log2(sqrt(area) / 224 + 2.2e-16)) vs torchvision's
    floor(4 + log2(sqrt(area) / 224) + 1e-6): differs only for boxes within 1e-6 of a level
    boundary (not an option).
  - Resize: shortest side 800, longest <= 1333, padded to a multiple of 32 (here the same
    rule, `data.resize` shortest_edge, padded to a fixed canvas, 832 × 1344 or its transpose
    with `data.aspect_grouping`; PIL's bilinear, which antialiases when it shrinks and
    rounds to uint8 between its passes, against TF's).

  training (config values; the losses are torchvision's)
  - RPN and box regression: SMOOTH_L1_BETA 0 (L1), torchvision 1/9; RPN losses normalised
    by images x 256 sampled anchors; POST_NMS_TOPK_TRAIN 1000 per image (2000 here).
  - ROI_HEADS.BATCH_SIZE_PER_IMAGE 512, POSITIVE_FRACTION 0.25; GT boxes appended to the
    proposals; multi-scale shortest side 640-800, horizontal flip; SGD lr 0.02 for 16 images.
"""

import re
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
import numpy as np

from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import convert_torchvision
from maskrcnn_jax.weights import options
from maskrcnn_jax.weights import unpickle

FLAGS = flags.FLAGS
Variables = dict[str, Any]

def read_pickle(path: str) -> dict[str, np.ndarray]:
  """The arrays of a detectron2 / Caffe2 `.pkl`: name -> numeric numpy array.

  Raises:
    unpickle.WeightFileError: the file is damaged or holds anything but numeric arrays,
      dicts, lists and scalars (`maskrcnn_jax.weights.unpickle`), or no state dict.
  """
  data = unpickle.read(path)
  if not isinstance(data, Mapping):
    raise unpickle.WeightFileError(f"{path} holds a {type(data).__name__}, not a dict of arrays")
  for wrapper in ("model", "blobs"):  # detectron2's model zoo; Caffe2 detection models.
    if isinstance(data.get(wrapper), Mapping):
      data = data[wrapper]
      break
  state = {}
  for key, value in data.items():
    if not isinstance(key, str) or key.endswith("_momentum") or key == "__author__":
      continue  # Caffe2's SGD momentum blobs; detectron2's file header.
    if not isinstance(value, np.ndarray | np.generic):
      raise unpickle.WeightFileError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                     "not a numeric array")
    state[key] = np.asarray(value)
  if not state:
    raise unpickle.WeightFileError(f"{path} holds no arrays")
  return state


def _caffe2_name(key: str) -> str:
  """Caffe2 blob name (`res2_0_branch2a_bn_s`) -> detectron2's (`res2.0.conv1.norm.weight`)."""
  k = key.replace("_", ".")
  k = re.sub(r"\.w$", ".weight", re.sub(r"\.b$", ".bias", k))
  k = re.sub(r"\.bn\.s$", ".norm.weight", re.sub(r"\.bn\.bias$", ".norm.bias", k))
  k = re.sub(r"^conv1\.", "stem.conv1.", re.sub(r"^res\.conv1\.", "conv1.", k))
  for c2, d2 in ((".branch1.", ".shortcut."), (".branch2a.", ".conv1."),
                 (".branch2b.", ".conv2."), (".branch2c.", ".conv3.")):
    k = k.replace(c2, d2)
  return k


# detectron2 ResNet names -> torchvision's (after the trunk prefix).
_TRUNK = (
    (r"^stem\.conv1\.norm\.", "bn1."),
    (r"^stem\.conv1\.", "conv1."),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
    (r"^res(\d)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}."),
    (r"^fc1000\.", "fc."),
)
# detectron2 GeneralizedRCNN names outside the trunk -> torchvision's MaskRCNN.
_HEADS = (
    (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0."),
    (r"^backbone\.fpn_output(\d)\.", lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0."),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.0."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
    (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
    (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0."),
    (r"^roi_heads\.mask_head\.deconv\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_heads\.mask_head\.predictor\.", "roi_heads.mask_predictor.mask_fcn_logits."),
)
_TRUNK_PREFIX = "backbone.bottom_up."
# Buffers detectron2 itself does not load from a checkpoint.
_IGNORED = re.compile(r"^(pixel_mean|pixel_std|(proposal_generator\.)?anchor_generator\..*)$")


def _rename(key: str, rules) -> str:
  for pattern, repl in rules:
    new = re.sub(pattern, repl, key)
    if new != key:
      return new
  return key


def torchvision_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A detectron2 / Caffe2 state dict under torchvision's names (ResNet or Mask R-CNN).

  Folded BatchNorms (weight and bias only) get mean 0 and var 1; keys without a
  torchvision counterpart keep their name, so that the conversion reports them.
  """
  if any("_branch2a_" in k or k == "conv1_w" for k in state):
    state = {_caffe2_name(k): v for k, v in state.items()}
  state = dict(state)
  for key in [k for k in state if k.endswith(".norm.weight")]:
    prefix = key[:-len("weight")]
    if f"{prefix}running_mean" not in state:
      n = state[key].shape
      state[f"{prefix}running_mean"] = np.zeros(n, np.float32)
      state[f"{prefix}running_var"] = np.ones(n, np.float32)
  out = {}
  for key, value in state.items():
    if _IGNORED.match(key):
      continue
    if key.startswith(_TRUNK_PREFIX):
      new = "backbone.body." + _rename(key[len(_TRUNK_PREFIX):], _TRUNK)
    elif key.startswith(("stem.", "res", "fc1000.")):
      new = _rename(key, _TRUNK)
    else:
      new = _rename(key, _HEADS)
    out[new] = value
  return out


def convert(state: Mapping[str, np.ndarray], *, depth: int | None = None) -> Variables:
  """A detectron2 state dict (Mask R-CNN or ImageNet ResNet) -> the project's variables.

  As `convert_torchvision.convert`; the classifier keeps detectron2's 81-way layout.
  """
  return convert_torchvision.convert(torchvision_state(state), depth=depth)


def metadata(variables: Variables, input_path: str) -> dict[str, Any]:
  """OUTPUT/metadata.json: the source, detectron2's model options
  (`maskrcnn_jax.weights.options`), and `classifier_layout` for an 81-way classifier."""
  out = {"converted_from": input_path, "converter": "convert_detectron2",
         **options.DETECTRON2}
  heads = variables["params"].get("roi_heads")
  if heads is not None:
    shapes = (heads["box_head"]["cls_score"]["bias"].shape,
              heads["box_head"]["bbox_pred"]["bias"].shape,
              heads["mask_head"]["mask_logits"]["bias"].shape)
    if shapes == ((81,), (320,), (80,)):
      out["classifier_layout"] = "detectron2_81"
  return out


def convert_file(input_path: str, output_dir: str, *, depth: int | None = None) -> Variables:
  """Converts the `.pkl` at `input_path` and writes it as a checkpoint `output_dir`."""
  variables = convert(read_pickle(input_path), depth=depth)
  checkpoint.save_variables(output_dir, variables, metadata(variables, input_path))
  logging.info("wrote %s (%s)", output_dir, convert_torchvision.summary(variables))
  return variables


def main(argv):
  del argv
  convert_torchvision.run_cli(convert_file, FLAGS.input, FLAGS.output, depth=FLAGS.depth)


if __name__ == "__main__":
  # Defined here, not on import, so that importing the module defines no global flags.
  flags.DEFINE_string("input", None, "detectron2 model-zoo .pkl.", required=True)
  flags.DEFINE_string("output", None, "Checkpoint directory to write.", required=True)
  flags.DEFINE_integer("depth", None, "Expected ResNet depth; default: inferred.")
  app.run(main)
