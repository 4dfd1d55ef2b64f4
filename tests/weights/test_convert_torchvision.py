"""Conversion of torchvision state dicts (written here as .npz, no torch needed)."""

import pathlib
import subprocess
import sys

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import tiny
from maskrcnn_jax import models
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import convert_torchvision as conv
import torchvision_states


def model_shapes(model_config, num_classes, size=64):
  model = models.build(model_config, num_classes=num_classes)
  batch = {"image": np.zeros((1, size, size, 3), np.uint8),
           "image_info": np.array([[size, size, 1, size, size]], np.float32)}
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "sampling": jax.random.key(1)}, batch, train=False))
  return {c: {k: v.shape for k, v in traverse_util.flatten_dict(variables[c], sep="/").items()}
          for c in variables}


def shapes(variables):
  return {c: {k: v.shape for k, v in traverse_util.flatten_dict(variables[c], sep="/").items()}
          for c in variables}


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
  state = torchvision_states.resnet_state(18, np.random.default_rng(0))
  path = str(tmp_path_factory.mktemp("r18") / "resnet18.npz")
  np.savez(path, **state)
  return state, path


def test_resnet18_converts_to_the_model_backbone(r18):
  state, path = r18
  variables = conv.convert(conv.read_state_dict(path))
  config = tiny.get_config().model
  expected = model_shapes(config, num_classes=3)
  backbone = {c: {k: s for k, s in expected[c].items() if k.startswith("backbone/")}
              for c in expected}
  assert shapes(variables) == backbone

  params, frozen = variables["params"]["backbone"], variables["frozen_bn"]["backbone"]
  # conv [out, in, kh, kw] -> [kh, kw, in, out]
  w = state["conv1.weight"]
  k = params["stem"]["conv1"]["kernel"]
  assert k[2, 5, 1, 17] == w[17, 1, 2, 5]
  np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["res4"]["block1"]["conv2"]["kernel"],
                                state["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["res3"]["block0"]["downsample_conv"]["kernel"][0, 0],
                                state["layer2.0.downsample.0.weight"][:, :, 0, 0].T)
  assert "downsample_conv" not in params["res2"]["block0"]
  # BN weight/bias/running_mean/running_var -> scale/bias/mean/var
  for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                       ("var", "running_var")):
    np.testing.assert_array_equal(frozen["stem"]["bn1"][ours], state[f"bn1.{theirs}"])
    np.testing.assert_array_equal(frozen["res5"]["block0"]["downsample_bn"][ours],
                                  state[f"layer4.0.downsample.1.{theirs}"])


@pytest.mark.parametrize("legacy", [False, True])
def test_pth_is_read_without_torch(r18, tmp_path, legacy):
  """torch's zip format and its legacy format (torchvision's 2019 files)."""
  state, path = r18
  pth = tmp_path / "resnet18.pth"
  torchvision_states.write_pth(str(pth), state, legacy=legacy)
  jax.tree.map(np.testing.assert_array_equal, conv.convert(conv.read_state_dict(str(pth))),
               conv.convert(conv.read_state_dict(path)))


def test_depth_is_checked_and_leftovers_fail(r18):
  state, _ = r18
  with pytest.raises(ValueError, match="ResNet-18, not ResNet-50"):
    conv.convert(state, depth=50)
  with pytest.raises(ValueError, match="layer5.0.conv1.weight"):
    conv.convert({**state, "layer5.0.conv1.weight": np.zeros(1, np.float32)})
  with pytest.raises(ValueError, match=r"no ResNet depth has \(2, 2, 1, 2\)"):
    conv.convert({k: v for k, v in state.items() if not k.startswith("layer3.1.")})
  with pytest.raises(ValueError, match="not a torchvision ResNet"):
    conv.convert({"encoder.weight": np.zeros(1)})


@pytest.mark.parametrize("prefix", ["", "backbone.body."])
@pytest.mark.parametrize("depth,counts", [(34, (3, 4, 6, 3)), (50, (3, 4, 6, 3)),
                                          (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))])
def test_depth_inferred_from_block_keys(depth, counts, prefix):
  conv3 = depth >= 50
  keys = {f"{prefix}layer{l}.{i}.conv{j}.weight": None for l, c in enumerate(counts, 1)
          for i in range(c) for j in range(1, 4 if conv3 else 3)}
  assert conv.infer_depth(keys, prefix) == depth


def test_mask_rcnn_converts_old_and_new_key_names():
  config = tiny.get_config().model
  dims = dict(channels=config.fpn_channels, fc_dim=config.roi_heads.fc_dim,
              mask_convs=config.roi_heads.mask_convs,
              mask_channels=config.roi_heads.mask_channels, num_classes=4)
  make = torchvision_states.mask_rcnn_state
  new = conv.convert(make(18, np.random.default_rng(1), **dims))
  old = conv.convert(make(18, np.random.default_rng(1), old_keys=True, **dims))
  assert shapes(new) == model_shapes(config, num_classes=4)
  jax.tree.map(np.testing.assert_array_equal, new, old)

  state = make(18, np.random.default_rng(1), **dims)
  heads = new["params"]["roi_heads"]
  np.testing.assert_array_equal(heads["box_head"]["bbox_pred"]["kernel"],
                                state["roi_heads.box_predictor.bbox_pred.weight"].T)
  np.testing.assert_array_equal(new["params"]["rpn"]["head"]["bbox_pred"]["kernel"][0, 0],
                                state["rpn.head.bbox_pred.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(new["params"]["fpn"]["lateral4"]["bias"],
                                state["backbone.fpn.inner_blocks.2.0.bias"])


def test_deconv_kernel_matches_torch_scatter():
  """torch's ConvTranspose2d, stride 2, kernel 2: out[2i + a, 2j + b] = x w[:, :, a, b]."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 3, 2, 5)).astype(np.float32)
  w = rng.normal(size=(5, 4, 2, 2)).astype(np.float32)  # [in, out, kh, kw]
  expected = np.zeros((1, 6, 4, 4), np.float32)
  for a in range(2):
    for b in range(2):
      expected[:, a::2, b::2] = np.einsum("nijc,co->nijo", x, w[:, :, a, b])
  layer = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID", use_bias=False)
  out = layer.apply({"params": {"kernel": conv.deconv_kernel(w)}}, x)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cli_writes_a_checkpoint_load_variables_reads(r18, tmp_path):
  _, path = r18
  out = tmp_path / "r18"
  subprocess.run([sys.executable, "-m", "maskrcnn_jax.weights.convert_torchvision",
                  f"--input={path}", f"--output={out}", "--depth=18"], check=True,
                 cwd=pathlib.Path(__file__).parents[2])
  wrong = subprocess.run([sys.executable, "-m", "maskrcnn_jax.weights.convert_torchvision",
                          f"--input={path}", f"--output={tmp_path / 'r50'}", "--depth=50"],
                         cwd=pathlib.Path(__file__).parents[2], capture_output=True, text=True,
                         check=False)
  assert wrong.returncode == 1 and not (tmp_path / "r50").exists()
  assert wrong.stderr == f"{path}: the state dict holds a ResNet-18, not ResNet-50\n"
  loaded = checkpoint.load_variables(str(out))
  expected = conv.convert(conv.read_state_dict(path))
  assert shapes(loaded) == shapes(expected)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, expected)
