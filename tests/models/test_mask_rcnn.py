"""The whole model, tiny: outputs, padding, one compile, bf16, and overfitting one image."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from maskrcnn_jax import models

# Optimised: test_overfits_one_image takes 80 steps of the module's one compiled step (what
# runs once compiles unoptimised). Slow: its tests share that step's compile (measured 4-60 s
# each on 2 cores).
pytestmark = [pytest.mark.optimized, pytest.mark.slow]

S, M, SM = 64, 4, 16
NUM_CLASSES = 3  # Background + 2.
LOSSES = ("rpn_objectness_loss", "rpn_box_loss", "rcnn_class_loss", "rcnn_box_loss",
          "mask_loss")


def tiny_config(**overrides):
  config = default.get_config().model
  default.torchvision_weights(config)
  config.depth = 18
  config.freeze_at = 0
  config.fpn_channels = 32
  config.pixel_std = (58.4, 57.1, 57.4)
  config.anchor_sizes = (8, 16, 32, 64, 128)
  config.rpn.samples_per_image = 64
  config.rpn.pre_nms_topk_train = 200
  config.rpn.pre_nms_topk_test = 100
  config.rpn.post_nms_topk_train = 64
  config.rpn.post_nms_topk_test = 32
  config.roi_heads.rois_per_image = 32
  config.roi_heads.fc_dim = 64
  config.roi_heads.mask_convs = 1
  config.roi_heads.mask_channels = 16
  config.roi_heads.detections_per_image = 8
  config.update(overrides)
  return config


def make_batch(num_valid=2, brightness=0):
  """One 64 px image: a red square (class 1) and a blue rectangle (class 2) on grey."""
  image = np.full((S, S, 3), 30 + brightness, np.uint8)
  image[6:30, 8:28] = (220, 40, 40)
  image[34:58, 30:60] = (40, 60, 220)
  valid = np.arange(M) < num_valid
  return {
      "image": image[None],
      "image_info": np.array([[S, S, 1.0, S, S]], np.float32),
      "boxes": np.array([[[8, 6, 28, 30], [30, 34, 60, 58], [0, 0, 0, 0], [0, 0, 0, 0]]],
                        np.float32) * valid[None, :, None],
      "classes": np.array([[1, 2, 0, 0]], np.int32) * valid[None],
      "masks": np.ones((1, M, SM, SM), np.uint8) * valid[None, :, None, None],
      "valid": valid[None],
  }


@pytest.fixture(scope="module")
def tiny(unoptimized):
  model = models.build(tiny_config(), num_classes=NUM_CLASSES)
  with unoptimized():  # Run once.
    variables = jax.jit(lambda k: model.init({"params": k, "sampling": k}, make_batch(),
                                             train=True))(jax.random.key(0))
  tx = optax.adam(3e-3)
  traces = []

  def loss_fn(params, batch, rng):
    out = model.apply({**variables, "params": params}, batch, train=True,
                      rngs={"sampling": rng})
    return sum(v for k, v in out.items() if k.endswith("_loss")), out

  @jax.jit
  def step(params, opt_state, batch, rng):
    traces.append(None)
    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, out

  with unoptimized():  # A few forwards.
    detect = jax.jit(lambda params, batch: model.apply(
        {**variables, "params": params}, batch, train=False)).lower(
            variables["params"], make_batch()).compile()
  return types.SimpleNamespace(model=model, variables=variables, tx=tx, step=step,
                               traces=traces, detect=detect)


def _train_once(tiny, batch, seed=0):
  params = tiny.variables["params"]
  return tiny.step(params, tiny.tx.init(params), batch, jax.random.key(seed))


def test_variable_layout(tiny):
  assert set(tiny.variables) == {"params", "frozen_bn"}
  assert set(tiny.variables["params"]) == {"backbone", "fpn", "rpn", "roi_heads"}
  assert set(tiny.variables["frozen_bn"]) == {"backbone"}


def test_train_outputs(tiny):
  params, _, out = _train_once(tiny, make_batch())
  assert set(LOSSES) <= set(out)
  for key, value in out.items():
    assert value.shape == () and value.dtype == jnp.float32, key
    assert np.isfinite(value), key
  assert out["num_gt"] == 2 and out["num_fg_rois"] >= 2 and out["num_rpn_fg"] >= 2
  assert out["mask_loss"] > 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_no_valid_instances(tiny):
  params, _, out = _train_once(tiny, make_batch(num_valid=0))
  assert all(np.isfinite(v) for v in out.values())
  for key in ("mask_loss", "rpn_box_loss", "rcnn_box_loss", "num_fg_rois", "num_rpn_fg"):
    assert out[key] == 0, key
  assert out["rcnn_class_loss"] > 0 and out["rpn_objectness_loss"] > 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_one_compile_for_new_batches(tiny):
  _train_once(tiny, make_batch(num_valid=1, brightness=5), seed=1)
  _train_once(tiny, make_batch(num_valid=2, brightness=9), seed=2)
  assert len(tiny.traces) == 1


def test_detection_outputs(tiny):
  det = tiny.detect(tiny.variables["params"], make_batch())
  d, p = 8, 32
  want = {"boxes": ((1, d, 4), jnp.float32), "scores": ((1, d), jnp.float32),
          "classes": ((1, d), jnp.int32), "masks": ((1, d, 28, 28), jnp.float32),
          "valid": ((1, d), jnp.bool_), "num_detections": ((1,), jnp.int32),
          "num_candidates": ((1,), jnp.int32), "proposals": ((1, p, 4), jnp.float32), "proposal_scores": ((1, p), jnp.float32),
          "proposal_valid": ((1, p), jnp.bool_)}
  assert {k: (v.shape, v.dtype) for k, v in det.items()} == want
  valid = np.asarray(det["valid"][0])
  assert det["num_detections"][0] == valid.sum()
  assert np.all(det["boxes"][0][~valid] == 0) and np.all(det["classes"][0][~valid] == 0)
  classes = np.asarray(det["classes"][0][valid])
  assert np.all((classes >= 1) & (classes < NUM_CLASSES))
  assert np.all(det["scores"][0][valid] > 0.05)
  assert np.all((det["boxes"][0] >= 0) & (det["boxes"][0] <= S))


def test_padding_never_detects(tiny):
  batch = make_batch()
  batch["image"] = np.zeros_like(batch["image"])
  batch["image_info"] = np.zeros_like(batch["image_info"])  # An eval padding image.
  det = tiny.detect(tiny.variables["params"], batch)
  assert not det["proposal_valid"].any()
  assert not det["valid"].any() and det["num_detections"][0] == 0
  assert not det["scores"].any() and not det["masks"].any()


def test_bfloat16_losses_are_float32(tiny, unoptimized):
  model = models.build(tiny_config(dtype="bfloat16"), num_classes=NUM_CLASSES)
  run = jax.jit(lambda v, b, k: model.apply(v, b, train=True, rngs={"sampling": k}))
  with unoptimized():  # Run once.
    out = run(tiny.variables, make_batch(), jax.random.key(0))  # float32 parameters
  for key in LOSSES:
    assert out[key].dtype == jnp.float32 and np.isfinite(out[key]), key


def test_build_rejects_bad_config():
  with pytest.raises(ValueError, match="dtype"):
    models.build(tiny_config(dtype="float16"), num_classes=3)
  with pytest.raises(ValueError, match="jax_enable_x64"):
    models.build(tiny_config(dtype="float64"), num_classes=3)
  with pytest.raises(ValueError, match="num_classes"):
    models.build(tiny_config(), num_classes=1)


def _iou(a, b):
  wh = np.maximum(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0)
  inter = wh[0] * wh[1]
  return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_overfits_one_image(tiny):
  batch = make_batch()
  params = tiny.variables["params"]
  opt_state = tiny.tx.init(params)
  totals = []
  for i in range(80):
    params, opt_state, out = tiny.step(params, opt_state, batch, jax.random.key(i))
    totals.append(float(sum(out[k] for k in LOSSES)))
  assert np.mean(totals[-10:]) < np.mean(totals[:3]) / 10, totals[::10]
  det = jax.tree.map(lambda x: np.asarray(x[0]), tiny.detect(params, batch))
  for gt_box, gt_class in zip(batch["boxes"][0, :2], batch["classes"][0, :2]):
    hits = [i for i in np.flatnonzero(det["valid"]) if _iou(det["boxes"][i], gt_box) >= 0.5]
    assert hits, f"no detection of GT {gt_box}: {det}"
    best = max(hits, key=lambda i: det["scores"][i])
    assert det["classes"][best] == gt_class and det["scores"][best] > 0.5, det
  assert len(tiny.traces) == 1
