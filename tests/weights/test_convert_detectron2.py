"""detectron2 / Caffe2 .pkl conversion: key layouts, the CLI.

Hostile files: test_unpickle.py. The numbers against detectron2 itself:
test_detectron2_parity.py.
"""

import json
import pathlib
import pickle
import subprocess
import sys

from flax import traverse_util
import jax
import numpy as np
import pytest

from configs import default
from maskrcnn_jax import models
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import convert_detectron2 as conv
import detectron2_states

GOLDEN = pathlib.Path(__file__).parent / "goldens" / "detectron2_r50_fpn.npz"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_pickles_of_every_protocol_are_read(tmp_path, protocol):
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
  path = tmp_path / "ok.pkl"
  data = {"model": {**arrays, "c": np.float32(2.5)}, "__author__": "x"}
  path.write_bytes(pickle.dumps(data, protocol=protocol))
  state = conv.read_pickle(str(path))
  assert sorted(state) == ["a", "b", "c"]
  np.testing.assert_array_equal(state["a"], arrays["a"])
  # Caffe2 detection files wrap the arrays in "blobs" and carry SGD momenta.
  path.write_bytes(pickle.dumps({"blobs": {"a": arrays["a"], "a_momentum": arrays["a"]}},
                                protocol=protocol))
  assert list(conv.read_pickle(str(path))) == ["a"]


def model_shapes(config, num_classes, size=64):
  model = models.build(config, num_classes=num_classes)
  batch = {"image": np.zeros((1, size, size, 3), np.uint8),
           "image_info": np.array([[size, size, 1, size, size]], np.float32)}
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "sampling": jax.random.key(1)}, batch, train=False))
  return shapes(variables)


def shapes(variables):
  return {c: {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variables[c], sep="/").items()}
          for c in variables}


@pytest.mark.parametrize("depth, blocks", [(50, (3, 4, 6, 3)), (101, (3, 4, 23, 3))])
@pytest.mark.slow
def test_msra_imagenet_backbone(depth, blocks):
  """R-50.pkl / R-101.pkl: Caffe2 names, folded BN; detectron2 names give the same."""
  state = detectron2_states.random_state(detectron2_states.caffe2_resnet_shapes(blocks), 0)
  variables = conv.convert(state, depth=depth)
  config = default.get_config().model
  config.depth = depth
  want = model_shapes(config, 2)
  got = shapes(variables)
  assert got["params"] == {k: v for k, v in want["params"].items() if k.startswith("backbone/")}
  assert got["frozen_bn"] == want["frozen_bn"]
  np.testing.assert_array_equal(variables["params"]["backbone"]["stem"]["conv1"]["kernel"],
                                state["conv1_w"].transpose(2, 3, 1, 0))
  bn = variables["frozen_bn"]["backbone"]["res3"]["block0"]["downsample_bn"]
  np.testing.assert_array_equal(bn["scale"], state["res3_0_branch1_bn_s"])
  np.testing.assert_array_equal(bn["bias"], state["res3_0_branch1_bn_b"])
  np.testing.assert_array_equal(bn["mean"], 0.0)
  np.testing.assert_array_equal(bn["var"], 1.0)
  conv1 = variables["params"]["backbone"]["res4"]["block0"]["conv1"]["kernel"]
  np.testing.assert_array_equal(conv1, state["res4_0_branch2a_w"].transpose(2, 3, 1, 0))
  # The same weights under detectron2's names (`stem.conv1.norm.weight`, ...).
  d2_names = {conv._caffe2_name(k): v for k, v in state.items()}  # pylint: disable=protected-access
  assert "res2.0.shortcut.norm.weight" in d2_names and "stem.conv1.norm.bias" in d2_names
  jax.tree.map(np.testing.assert_array_equal, conv.convert(d2_names), variables)


def r101_shapes():
  """A detectron2 mask_rcnn_R_101_FPN_3x state dict's shapes (from the R50 golden's)."""
  with np.load(GOLDEN, allow_pickle=False) as golden:
    shapes50 = json.loads(str(golden["shapes"]))
  out = dict(shapes50)
  for i in range(6, 23):
    for k, v in shapes50.items():
      if k.startswith("backbone.bottom_up.res4.1."):
        out[k.replace("res4.1.", f"res4.{i}.")] = v
  return out


@pytest.mark.slow
def test_mask_rcnn_r101_layout_and_cli(tmp_path):
  state = detectron2_states.random_state(r101_shapes(), 1)
  path = tmp_path / "model_final.pkl"
  path.write_bytes(pickle.dumps({"model": state, "__author__": "Detectron2 Model Zoo",
                                 "matching_heuristics": True}))
  out = tmp_path / "r101"
  subprocess.run([sys.executable, "-m", "maskrcnn_jax.weights.convert_detectron2",
                  f"--input={path}", f"--output={out}", "--depth=101"], check=True,
                 capture_output=True)
  variables = checkpoint.load_variables(str(out))
  meta = checkpoint.load_metadata(str(out))
  assert meta["classifier_layout"] == "detectron2_81" and meta["input_format"] == "BGR"
  config = default.get_config().model
  config.depth = 101
  want, got = model_shapes(config, 81), shapes(variables)
  # detectron2_81: no background row in the box deltas and mask logits.
  want["params"]["roi_heads/box_head/bbox_pred/kernel"] = (1024, 320)
  want["params"]["roi_heads/box_head/bbox_pred/bias"] = (320,)
  want["params"]["roi_heads/mask_head/mask_logits/kernel"] = (1, 1, 256, 80)
  want["params"]["roi_heads/mask_head/mask_logits/bias"] = (80,)
  assert got == want
  heads = variables["params"]["roi_heads"]
  np.testing.assert_array_equal(heads["box_head"]["fc6"]["kernel"],
                                state["roi_heads.box_head.fc1.weight"].T)
  np.testing.assert_array_equal(
      heads["mask_head"]["deconv"]["kernel"],
      state["roi_heads.mask_head.deconv.weight"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(variables["params"]["rpn"]["head"]["bbox_pred"]["kernel"],
                                state["proposal_generator.rpn_head.anchor_deltas.weight"]
                                .transpose(2, 3, 1, 0))
  fpn = variables["params"]["fpn"]["lateral3"]["kernel"]
  np.testing.assert_array_equal(fpn, state["backbone.fpn_lateral3.weight"].transpose(2, 3, 1, 0))
  bn = variables["frozen_bn"]["backbone"]["res4"]["block22"]["bn3"]
  np.testing.assert_array_equal(
      bn["var"], state["backbone.bottom_up.res4.22.conv3.norm.running_var"])


def test_wrong_depth_and_leftover_keys_fail():
  state = detectron2_states.random_state(detectron2_states.caffe2_resnet_shapes((3, 4, 6, 3)), 0)
  with pytest.raises(ValueError, match="ResNet-50, not ResNet-101"):
    conv.convert(state, depth=101)
  state["res5_9_extra_w"] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError, match=r"1 state dict keys have no place.*res5\.9\.extra"):
    conv.convert(state)
