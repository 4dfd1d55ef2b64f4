"""Staged fine-tuning masks, the per-stage optimiser and stage bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from maskrcnn_jax.training import optimizer


def fake_params():
  leaf = lambda: {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  backbone = {"stem": {"conv1": leaf()}}
  backbone.update({f"res{i}": {"block0": {"conv1": leaf()}} for i in range(2, 6)})
  return {"backbone": backbone, "fpn": {"lateral2": leaf()}, "rpn": {"conv": leaf()},
          "roi_heads": {"fc1": leaf()}}


def trained_paths(mask):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(mask, sep="/")
  return sorted({"/".join(k.split("/")[:2]) for k, v in flat.items() if v})


@pytest.mark.parametrize("trainable, expected", [
    ("heads", ["fpn/lateral2", "roi_heads/fc1", "rpn/conv"]),
    ("4+", ["backbone/res4", "backbone/res5", "fpn/lateral2", "roi_heads/fc1", "rpn/conv"]),
    ("3+", ["backbone/res3", "backbone/res4", "backbone/res5", "fpn/lateral2", "roi_heads/fc1",
            "rpn/conv"]),
    ("all", ["backbone/res3", "backbone/res4", "backbone/res5", "fpn/lateral2", "roi_heads/fc1",
             "rpn/conv"]),
    (["rpn/.*"], ["rpn/conv"]),
])
def test_presets_with_stem_and_res2_frozen(trainable, expected):
  mask = optimizer.trainable_mask(fake_params(), trainable, freeze_at=2)
  assert trained_paths(mask) == expected


def test_freeze_at_zero_trains_the_stem():
  mask = optimizer.trainable_mask(fake_params(), "all", freeze_at=0)
  assert "backbone/stem" in trained_paths(mask)


def test_pattern_matching_nothing_is_an_error():
  with pytest.raises(ValueError, match="'rnp/.*' matches no parameter"):
    optimizer.trainable_mask(fake_params(), ["rpn/.*", "rnp/.*"], freeze_at=2)


def test_nothing_trainable_is_an_error():
  with pytest.raises(ValueError, match="leaves no parameter to train"):
    optimizer.trainable_mask(fake_params(), ["backbone/stem/.*"], freeze_at=2)


def test_split_merge_round_trip():
  params = fake_params()
  mask = optimizer.trainable_mask(params, "heads", freeze_at=2)
  trainable, frozen = optimizer.split(params, mask)
  assert "backbone" not in trainable and "fpn" not in frozen
  back = optimizer.merge(trainable, frozen)
  assert jax.tree.structure(back) == jax.tree.structure(params)


def test_stage_bookkeeping():
  stages = default.get_config().train.stages
  assert optimizer.stage_boundaries(stages) == [0, 40000, 100000, 200000]
  assert [optimizer.stage_index(stages, s) for s in (0, 39999, 40000, 199999, 200000)] == [
      0, 0, 1, 2, 3]
  assert [s.lr for s in stages] == pytest.approx([0.002, 0.0002, 0.00002])


def test_learning_rate_warms_up_then_holds():
  config = default.get_config()
  stage = config.train.stages[1]
  lr = optimizer.learning_rate(config.train, stage)
  assert float(lr(0)) == pytest.approx(stage.lr * 1e-3, rel=1e-5)
  assert float(lr(250)) == pytest.approx(stage.lr * (1e-3 + 0.999 * 0.5), rel=1e-5)
  assert float(lr(500)) == pytest.approx(stage.lr)
  assert float(lr(10**6)) == pytest.approx(stage.lr)


def test_optimizer_decays_kernels_not_biases_and_clips():
  config = default.get_config()
  config.train.warmup_steps = 0
  config.train.momentum = 0.0
  stage = default.stage("s", "heads", steps=10, lr=1.0)
  params = {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}
  tx = optimizer.make_optimizer(config.train, stage)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -2.0 * 1e-4, rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], 0.0)
  big = {"kernel": jnp.full((2,), 100.0), "bias": jnp.zeros((2,))}
  updates, _ = tx.update(big, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(5.0, rel=1e-3)
