"""init_from_checkpoint: scopes, class-count changes, mismatch errors, shardings."""

import functools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from configs import tiny
from maskrcnn_jax import models
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import convert_torchvision as conv
from maskrcnn_jax.weights import load
import torchvision_states


def tree(fill, num_classes=5, fc=8):
  """A model-shaped variables tree (a few leaves per part) filled with `fill`."""
  f = lambda *shape: np.full(shape, fill, np.float32)
  return {
      "params": {
          "backbone": {"stem": {"conv1": {"kernel": f(7, 7, 3, 4)}},
                       "res2": {"block0": {"conv1": {"kernel": f(3, 3, 4, 4)}}}},
          "fpn": {"lateral2": {"kernel": f(1, 1, 4, 2), "bias": f(2)}},
          "roi_heads": {
              "box_head": {"fc7": {"kernel": f(fc, fc), "bias": f(fc)},
                           "cls_score": {"kernel": f(fc, num_classes), "bias": f(num_classes)},
                           "bbox_pred": {"kernel": f(fc, 4 * num_classes),
                                         "bias": f(4 * num_classes)}},
              "mask_head": {"mask_logits": {"kernel": f(1, 1, 2, num_classes),
                                            "bias": f(num_classes)}}},
      },
      "frozen_bn": {"backbone": {"stem": {"bn1": {"scale": f(4), "mean": f(4)}}}},
  }


def leaf(variables, path):
  for part in path.split("/"):
    variables = variables[part]
  return np.asarray(variables)


def test_backbone_scope_replaces_backbone_only():
  out = load.merge(tree(0.0), tree(1.0, num_classes=9, fc=3), scope="backbone")
  assert (leaf(out, "params/backbone/stem/conv1/kernel") == 1).all()
  assert (leaf(out, "frozen_bn/backbone/stem/bn1/mean") == 1).all()
  assert (leaf(out, "params/fpn/lateral2/kernel") == 0).all()
  assert leaf(out, "params/roi_heads/box_head/fc7/kernel").shape == (8, 8)


def test_full_scope_keeps_class_dependent_layers_when_class_count_differs():
  model = tree(0.0, num_classes=5)
  out = load.merge(model, tree(1.0, num_classes=91), scope="full")
  for path in ("params/backbone/res2/block0/conv1/kernel", "params/fpn/lateral2/bias",
               "params/roi_heads/box_head/fc7/kernel", "frozen_bn/backbone/stem/bn1/scale"):
    assert (leaf(out, path) == 1).all(), path
  for path in ("box_head/cls_score/kernel", "box_head/bbox_pred/bias",
               "mask_head/mask_logits/kernel"):
    value = leaf(out, f"params/roi_heads/{path}")
    assert (value == 0).all(), path
    assert value.shape == leaf(model, f"params/roi_heads/{path}").shape, path


def test_full_scope_same_class_count_loads_everything():
  out = load.merge(tree(0.0), tree(1.0), scope="full")
  assert all((np.asarray(x) == 1).all() for x in jax.tree.leaves(out))


def test_mismatches_list_every_key():
  source = tree(1.0, fc=6)
  del source["params"]["fpn"]["lateral2"]["bias"]
  source["frozen_bn"]["backbone"]["stem"]["bn1"]["var"] = np.ones(4, np.float32)
  with pytest.raises(ValueError) as error:
    load.merge(tree(0.0), source, scope="full", source="/ckpt/x")
  message = str(error.value)
  assert "/ckpt/x does not fit the model" in message
  assert "missing (1): params/fpn/lateral2/bias" in message
  assert "unexpected (1): frozen_bn/backbone/stem/bn1/var" in message
  assert ("params/roi_heads/box_head/fc7/kernel: model (8, 8), checkpoint (6, 6)"
          in message)

  source = tree(1.0)
  source["params"]["backbone"]["stem"]["conv1"]["kernel"] = np.ones((3, 3, 3, 4), np.float32)
  with pytest.raises(ValueError, match=r"shape differs \(1\): params/backbone/stem/conv1"):
    load.merge(tree(0.0), source, scope="backbone")
  with pytest.raises(ValueError, match="has no frozen_bn"):
    load.merge(tree(0.0), {"params": tree(1.0)["params"]}, scope="backbone")
  with pytest.raises(ValueError, match="scope must be one of backbone, full"):
    load.merge(tree(0.0), tree(1.0), scope="heads")


def test_from_checkpoint_directory_keeps_shardings(tmp_path):
  checkpoint.save_variables(str(tmp_path / "ckpt"), tree(1.0, num_classes=91))
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P())
  variables = jax.device_put(tree(0.0), sharding)
  out = load.init_from_checkpoint(variables, str(tmp_path / "ckpt"), scope="full")
  for new, old in zip(jax.tree.leaves(out), jax.tree.leaves(variables)):
    assert isinstance(new, jax.Array) and new.sharding == old.sharding
    assert new.dtype == old.dtype and new.shape == old.shape
  assert (leaf(out, "params/fpn/lateral2/kernel") == 1).all()
  assert (leaf(out, "params/roi_heads/box_head/cls_score/bias") == 0).all()


def test_converted_mask_rcnn_into_a_model_with_other_classes(tmp_path):
  config = tiny.get_config().model
  heads = config.roi_heads
  state = torchvision_states.mask_rcnn_state(
      18, np.random.default_rng(3), channels=config.fpn_channels, fc_dim=heads.fc_dim,
      mask_convs=heads.mask_convs, mask_channels=heads.mask_channels, num_classes=91)
  np.savez(tmp_path / "tv.npz", **state)
  converted = conv.convert_file(str(tmp_path / "tv.npz"), str(tmp_path / "tv"))
  model = models.build(config, num_classes=4)
  batch = {"image": np.zeros((1, 64, 64, 3), np.uint8),
           "image_info": np.array([[64, 64, 1, 64, 64]], np.float32)}
  rngs = {"params": jax.random.key(0), "sampling": jax.random.key(1)}
  shapes = jax.eval_shape(functools.partial(model.init, train=False), rngs, batch)
  rng = np.random.default_rng(4)
  variables = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes)
  out = load.init_from_checkpoint(variables, str(tmp_path / "tv"), scope="full")
  np.testing.assert_array_equal(leaf(out, "params/rpn/head/conv/kernel"),
                                converted["params"]["rpn"]["head"]["conv"]["kernel"])
  np.testing.assert_array_equal(leaf(out, "frozen_bn/backbone/res5/block1/bn2/var"),
                                state["backbone.body.layer4.1.bn2.running_var"])
  np.testing.assert_array_equal(leaf(out, "params/roi_heads/mask_head/mask_logits/kernel"),
                                leaf(variables, "params/roi_heads/mask_head/mask_logits/kernel"))

  config.depth = 34
  deeper = jax.eval_shape(functools.partial(models.build(config, num_classes=4).init,
                                            train=False), rngs, batch)
  with pytest.raises(ValueError, match=r"missing \(\d+\): params/backbone/res2/block2/conv1"):
    load.init_from_checkpoint(deeper, str(tmp_path / "tv"), scope="backbone")
