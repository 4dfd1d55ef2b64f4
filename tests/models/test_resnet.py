"""ResNet trunk: torchvision's parameter counts, shapes, frozen stages, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.models import resnet


def _count(depth):
  """Trainable parameters + BN affine, i.e. torchvision's count of the same layers."""
  variables = jax.eval_shape(resnet.ResNet(depth=depth).init, jax.random.key(0),
                             jnp.zeros((1, 64, 64, 3)))
  params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  affine = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(variables["frozen_bn"])
               if path[-1].key in ("scale", "bias"))
  return params + affine


@pytest.mark.parametrize("depth, torchvision_count", [
    (18, 11_689_512 - 513_000),      # resnet18 minus fc (512 * 1000 + 1000)
    (50, 25_557_032 - 2_049_000),    # resnet50 minus fc (2048 * 1000 + 1000)
    (101, 44_549_160 - 2_049_000),
])
def test_parameter_count_matches_torchvision(depth, torchvision_count):
  assert _count(depth) == torchvision_count


def test_unknown_depth_raises():
  with pytest.raises(ValueError, match="depth"):
    resnet.out_channels(42)


@pytest.fixture(scope="module")
def r18():
  model = resnet.ResNet(depth=18, freeze_at=2)
  image = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  variables = jax.jit(model.init)(jax.random.key(1), image)
  return model, variables, image


def test_shapes_and_collections(r18):
  model, variables, image = r18
  outputs = jax.eval_shape(model.apply, variables, image)
  assert [o.shape for o in outputs] == [(2, 16, 24, 64), (2, 8, 12, 128), (2, 4, 6, 256),
                                        (2, 2, 3, 512)]
  assert set(variables) == {"params", "frozen_bn"}
  assert set(variables["params"]) == {"stem", "res2", "res3", "res4", "res5"}
  assert set(variables["frozen_bn"]["stem"]["bn1"]) == {"scale", "bias", "mean", "var"}
  assert "downsample_conv" in variables["params"]["res3"]["block0"]
  assert "downsample_conv" not in variables["params"]["res2"]["block0"]


@pytest.mark.slow
def test_frozen_stages_get_zero_gradient(r18):
  model, variables, image = r18
  grads = jax.jit(jax.grad(lambda p: sum(jnp.sum(o) for o in model.apply(
      {**variables, "params": p}, image))))(variables["params"])
  norms = {k: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(v)))
           for k, v in grads.items()}
  assert norms["stem"] == 0 and norms["res2"] == 0
  assert all(norms[k] > 0 for k in ("res3", "res4", "res5"))


def test_frozen_bn_applies_statistics():
  bn = resnet.FrozenBatchNorm()
  x = jnp.arange(6.0).reshape(1, 3, 2)
  stats = {"scale": jnp.array([2.0, 1.0]), "bias": jnp.array([1.0, 0.0]),
           "mean": jnp.array([1.0, 3.0]), "var": jnp.array([4.0 - 1e-5, 1.0 - 1e-5])}
  out = bn.apply({"frozen_bn": stats}, x)
  want = np.stack([(np.arange(0, 6, 2) - 1.0) * 2 / 2 + 1, np.arange(1, 6, 2) - 3.0], -1)
  np.testing.assert_allclose(out[0], want, rtol=1e-6)


@pytest.mark.slow
def test_bfloat16_and_remat_match_float32(r18):
  _, variables, image = r18
  want = jax.jit(resnet.ResNet(depth=18).apply)(variables, image)
  got = jax.jit(resnet.ResNet(depth=18, dtype=jnp.bfloat16, remat=True).apply)(variables, image)
  assert all(g.dtype == jnp.bfloat16 for g in got)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0.1,
                               atol=0.05 * float(jnp.abs(w).max()))


@pytest.mark.slow
def test_block_boundary_is_kept_and_exact():
  """On CPU each block's output passes a conditional that XLA keeps (the fusion boundary
  against recomputed residual chains); values and gradients equal the unbounded stage's,
  NaN included."""
  stage = resnet.Stage(resnet.Bottleneck, 3, 8, 1)
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 32))
  variables = stage.init(jax.random.key(1), x)
  loss = lambda v, x: jnp.sum(stage.apply(v, x) ** 2)
  x_nan = x.at[0, 0, 0, 0].set(jnp.nan)
  compiled = jax.jit(jax.value_and_grad(loss)).lower(variables, x).compile()
  if jax.default_backend() == "cpu":
    # Forward and backward, every block.
    assert compiled.as_text().count("conditional(") >= 2 * 3
  value, grad = compiled(variables, x)
  nan = jax.jit(stage.apply)(variables, x_nan)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(resnet, "_block_boundary", lambda v: v)
    want_value, want_grad = jax.jit(jax.value_and_grad(loss))(variables, x)
    want_nan = jax.jit(stage.apply)(variables, x_nan)
  np.testing.assert_array_equal(value, want_value)
  jax.tree.map(np.testing.assert_array_equal, grad, want_grad)
  np.testing.assert_array_equal(nan, want_nan)
