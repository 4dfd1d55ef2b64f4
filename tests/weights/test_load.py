"""init_from_checkpoint: scopes, class-count changes, mismatch errors, shardings."""

import functools
import logging

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import models
from maskrcnn_jax.data import categories
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import convert_torchvision as conv
from maskrcnn_jax.weights import load
from maskrcnn_jax.weights import options
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


def class_rows(num_rows, group, fc=8, start=0.0):
  """cls/box/mask leaves whose row r (of `group` outputs) holds start + r everywhere."""
  rows = np.repeat(start + np.arange(num_rows, dtype=np.float32), group)
  return {"kernel": np.tile(rows, (fc, 1)), "bias": rows.copy()}


def with_class_layers(variables, cls, box, mask, fc=8):
  """`variables` with class layers of cls / box / mask rows (values = source row index)."""
  heads = variables["params"]["roi_heads"]
  heads["box_head"]["cls_score"] = class_rows(cls, 1, fc)
  heads["box_head"]["bbox_pred"] = class_rows(box, 4, fc)
  logits = class_rows(mask, 1, 2)
  heads["mask_head"]["mask_logits"] = {"kernel": logits["kernel"][None, None],
                                       "bias": logits["bias"]}
  return variables


COCO = categories.get_class_set("coco")


@pytest.mark.parametrize("layout, cls, box, mask", [
    ("torchvision91", 91, 91, 91), ("detectron2_81", 81, 80, 80), ("coco", 81, 81, 81)])
def test_layouts_map_onto_the_coco_class_set(layout, cls, box, mask):
  """Row j of the model (class set `coco`) comes from the checkpoint row of its COCO id."""
  model = tree(-1.0, num_classes=81)
  loaded = with_class_layers(tree(1.0, num_classes=81), cls, box, mask)
  out = load.merge(model, loaded, scope="full", layout=layout, class_set=COCO,
                   require_classes=True)
  heads = out["params"]["roi_heads"]
  ids = np.array((0,) + COCO.coco_ids)
  if layout == "torchvision91":
    want = {"cls": ids, "box": ids, "mask": ids}  # Row i is COCO id i.
  elif layout == "detectron2_81":
    contiguous = np.arange(-1, 80)  # Thing k (0-based) at row k, background at 80 / none.
    want = {"cls": np.where(contiguous < 0, 80, contiguous),
            "box": np.where(contiguous < 0, -1, contiguous),  # -1: the model's own row.
            "mask": np.where(contiguous < 0, -1, contiguous)}
  else:
    want = {k: np.arange(81) for k in ("cls", "box", "mask")}
  np.testing.assert_array_equal(heads["box_head"]["cls_score"]["bias"], want["cls"])
  np.testing.assert_array_equal(heads["box_head"]["cls_score"]["kernel"][3], want["cls"])
  np.testing.assert_array_equal(heads["box_head"]["bbox_pred"]["bias"].reshape(81, 4),
                                np.repeat(want["box"][:, None], 4, 1))
  np.testing.assert_array_equal(heads["box_head"]["bbox_pred"]["kernel"][5].reshape(81, 4)[:, 2],
                                want["box"])
  np.testing.assert_array_equal(heads["mask_head"]["mask_logits"]["kernel"][0, 0, 1],
                                want["mask"])
  np.testing.assert_array_equal(heads["mask_head"]["mask_logits"]["bias"], want["mask"])
  assert (leaf(out, "params/fpn/lateral2/kernel") == 1).all()


def test_detectron2_scores_survive_the_permutation():
  """Softmax over detectron2's 81 logits, permuted to background first: the same scores."""
  rng = np.random.default_rng(0)
  loaded = tree(1.0, num_classes=81)
  cls = {"kernel": rng.normal(size=(8, 81)).astype(np.float32),
         "bias": rng.normal(size=81).astype(np.float32)}
  loaded = with_class_layers(loaded, 81, 80, 80)
  loaded["params"]["roi_heads"]["box_head"]["cls_score"] = cls
  out = load.merge(tree(0.0, num_classes=81), loaded, scope="full", layout="detectron2_81",
                   class_set=COCO)
  x = rng.normal(size=(3, 8)).astype(np.float32)
  softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(
      z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
  theirs = softmax(x @ cls["kernel"] + cls["bias"])
  ours_cls = out["params"]["roi_heads"]["box_head"]["cls_score"]
  ours = softmax(x @ ours_cls["kernel"] + ours_cls["bias"])
  np.testing.assert_allclose(ours[:, 0], theirs[:, 80], rtol=1e-6)
  np.testing.assert_allclose(ours[:, 1:], theirs[:, :80], rtol=1e-6)


def test_things_and_stuff_takes_things_and_keeps_stuff_rows():
  cs = categories.get_class_set("things_and_stuff")
  model = tree(-1.0, num_classes=cs.num_classes + 1)
  loaded = with_class_layers(tree(1.0, num_classes=91), 91, 91, 91)
  out = load.merge(model, loaded, scope="full", layout="torchvision91", class_set=cs)
  bias = out["params"]["roi_heads"]["box_head"]["cls_score"]["bias"]
  np.testing.assert_array_equal(bias[:81], (0,) + categories.THING_IDS)
  assert (bias[81:] == -1).all()
  with pytest.raises(ValueError, match=r"lacks 91 of the 171 classes.*banner"):
    load.merge(model, loaded, scope="full", layout="torchvision91", class_set=cs,
               require_classes=True)


def test_no_shared_class_keeps_the_model_layers():
  cs = categories.get_class_set("stuff")
  model = tree(-1.0, num_classes=cs.num_classes + 1)
  loaded = with_class_layers(tree(1.0, num_classes=91), 91, 91, 91)
  out = load.merge(model, loaded, scope="full", layout="torchvision91", class_set=cs)
  assert (leaf(out, "params/roi_heads/box_head/cls_score/bias") == -1).all()
  assert (leaf(out, "params/roi_heads/mask_head/mask_logits/kernel") == -1).all()
  assert (leaf(out, "params/fpn/lateral2/kernel") == 1).all()
  with pytest.raises(ValueError, match="has none of the classes of 'stuff'"):
    load.merge(model, loaded, scope="full", layout="torchvision91", class_set=cs,
               require_classes=True)
  with pytest.raises(ValueError, match="no classifier_layout maps them"):
    load.merge(model, loaded, scope="full", class_set=cs, require_classes=True)


def test_layout_shape_mismatch_and_unknown_layout_fail():
  loaded = with_class_layers(tree(1.0, num_classes=81), 81, 81, 81)
  with pytest.raises(ValueError, match=r"bbox_pred/kernel has shape \(8, 324\), "
                                       r"classifier_layout detectron2_81 needs \(\.\.\., 320\)"):
    load.merge(tree(0.0, num_classes=81), loaded, scope="full", layout="detectron2_81",
               class_set=COCO)
  with pytest.raises(ValueError, match="unknown classifier_layout 'd2'"):
    load.merge(tree(0.0, num_classes=81), loaded, scope="full", layout="d2", class_set=COCO)


def test_converted_torchvision_records_its_layout(tmp_path):
  state = torchvision_states.mask_rcnn_state(
      18, np.random.default_rng(3), channels=16, fc_dim=32, mask_convs=1, mask_channels=16,
      num_classes=91)
  np.savez(tmp_path / "tv.npz", **state)
  conv.convert_file(str(tmp_path / "tv.npz"), str(tmp_path / "tv"))
  meta = checkpoint.load_metadata(str(tmp_path / "tv"))
  assert meta["classifier_layout"] == "torchvision91"
  assert meta["converted_from"] == str(tmp_path / "tv.npz")


def _weights(path, meta):
  checkpoint.save_variables(str(path), tree(1.0), meta)
  return str(path)


@pytest.mark.parametrize("key", options.KEYS)
def test_each_model_option_must_match(tmp_path, key):
  other = {"input_format": "BGR", "pixel_mean": (1.0, 2.0, 3.0), "pixel_std": (2.0, 2.0, 2.0),
           "stride_in_1x1": True, "round_anchors": False}[key]
  path = _weights(tmp_path / "w", {**options.TORCHVISION, key: other})
  model = tiny.get_config().model  # torchvision's options.
  with pytest.raises(ValueError) as e:
    load.check_options(path, model)
  want = (f"config.model.{key} = {options.of(model)[key]!r}: the weights at {path!r} were "
          f"made with {other!r}; set their options with config.model.input_format = ")
  assert str(e.value).startswith(want) and "\n" not in str(e.value), str(e.value)
  if key == "round_anchors":
    load.check_options(path, model, scope="backbone")  # The RPN is not loaded.


def test_options_name_the_helper_and_old_files_read_as_torchvision(tmp_path, caplog):
  model = tiny.get_config().model
  path = _weights(tmp_path / "d2", {"converter": "convert_detectron2", **options.DETECTRON2})
  with pytest.raises(ValueError, match=r"config.model.input_format = 'RGB': .* made with "
                     r"'BGR'; set their options with detectron2_weights\(config.model\) "
                     r"\(configs/default.py\) in the config$"):
    load.check_options(path, model)
  # Written before options were recorded: torchvision's; detectron2's for its converter.
  with caplog.at_level(logging.INFO):
    load.check_options(_weights(tmp_path / "old", {"classifier_layout": "torchvision91"}), model)
  assert "records no input_format, pixel_mean, pixel_std, stride_in_1x1, round_anchors: read as torchvision's" in caplog.text
  old_d2 = _weights(tmp_path / "old_d2", {"converter": "convert_detectron2",
                                          "input_format": "BGR", "stride_in_1x1": True})
  default.detectron2_weights(model)
  load.check_options(old_d2, model)
