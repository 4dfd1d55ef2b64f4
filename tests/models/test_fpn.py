"""FPN: torch's nearest upsampling for odd sizes, pyramid shapes and parameter names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.models import fpn


@pytest.mark.parametrize("height, width", [(8, 8), (7, 13), (1, 2), (25, 3)])
def test_upsample_matches_torch_nearest_indexing(height, width):
  h, w = -(-height // 2), -(-width // 2)
  x = jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1)
  # torch's F.interpolate(size=...) nearest: source index floor(i * in / out).
  rows = np.floor(np.arange(height) * h / height).astype(int)
  cols = np.floor(np.arange(width) * w / width).astype(int)
  want = np.asarray(x)[0, rows][:, cols]
  np.testing.assert_array_equal(fpn.upsample_nearest(x, height, width)[0], want)


def test_upsample_rejects_other_ratios():
  with pytest.raises(ValueError, match="upsample"):
    fpn.upsample_nearest(jnp.zeros((1, 3, 3, 1)), 8, 6)


def test_pyramid_shapes_and_names():
  # C2..C5 of a 200 x 72 image: odd sizes on the way down.
  shapes = [(50, 18, 8), (25, 9, 16), (13, 5, 32), (7, 3, 64)]
  features = [jnp.ones((2, *s)) for s in shapes]
  model = fpn.FPN(channels=16)
  variables = jax.eval_shape(model.init, jax.random.key(0), features)
  assert set(variables["params"]) == {f"{k}{l}" for k in ("lateral", "output")
                                      for l in range(2, 6)}
  outputs = jax.eval_shape(model.apply, variables, features)
  assert [o.shape for o in outputs] == [(2, 50, 18, 16), (2, 25, 9, 16), (2, 13, 5, 16),
                                        (2, 7, 3, 16), (2, 4, 2, 16)]


def test_p6_subsamples_p5():
  features = [jax.random.normal(jax.random.key(i), (1, 16 // 2**i, 16 // 2**i, 4))
              for i in range(4)]
  model = fpn.FPN(channels=8)
  variables = model.init(jax.random.key(0), features)
  outputs = model.apply(variables, features)
  np.testing.assert_array_equal(outputs[4], outputs[3][:, ::2, ::2])
