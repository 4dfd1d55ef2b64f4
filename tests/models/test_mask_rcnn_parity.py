"""The model against torchvision's Mask R-CNN with the same (converted) random weights.

parity_model's ResNet-18 FPN Mask R-CNN at 128 px, eval mode, on a square, a 4:3 and a 3:4
image padded to 128 x 128 (torchvision pads its normalised batch with 0, the mean colour; so
does the model): FPN features, RPN outputs, proposals, detections and 28x28 masks agree.
torchvision runs in its own process (mask_rcnn_parity_ref.py, the `torch_reference` fixture
of tests/conftest.py).
"""

import jax
import numpy as np
import pytest

from maskrcnn_jax import models
import parity_model

REF = "tests/models/mask_rcnn_parity_ref.py"
S = parity_model.S


def _jax_model():
  return models.build(parity_model.model_config(), num_classes=parity_model.NUM_CLASSES)


@pytest.fixture(scope="module", params=[(S, S), (96, S), (S, 96)],
                ids=["square", "4:3", "3:4"])
def reference(torch_reference, request):
  height, width = request.param
  return torch_reference(REF, size=S, height=height, width=width,
                         num_classes=parity_model.NUM_CLASSES, mean=parity_model.MEAN,
                         std=parity_model.STD, sizes=parity_model.SIZES)


@pytest.fixture(scope="module")
def outputs(reference):
  image = reference["image"]
  h, w = image.shape[:2]
  features = parity_model.group(reference, "features/")
  torch_out = {"features": [features[str(i)] for i in range(len(features))],
               "proposals": reference["proposals"],
               "detections": {k: reference[k] for k in ("boxes", "scores", "labels", "masks")}}
  model = _jax_model()
  variables = parity_model.convert(parity_model.group(reference, "state/"))
  padded = np.zeros((1, S, S, 3), np.uint8)  # Black: the model must make it the mean.
  padded[0, :h, :w] = image
  batch = {"image": padded, "image_info": np.array([[h, w, 1.0, h, w]], np.float32)}
  jax_out = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)
  x = np.zeros((1, S, S, 3), np.float32)
  x[0, :h, :w] = (image - np.array(model.pixel_mean)) / np.array(model.pixel_std)
  jax_features = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.fpn(m.backbone(x))))(variables, x)
  return torch_out, jax_out, jax_features


def test_converted_variables_match_init_structure(reference):
  model = _jax_model()
  batch = {"image": np.zeros((1, S, S, 3), np.uint8),
           "image_info": np.array([[S, S, 1.0, S, S]], np.float32)}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  state = parity_model.group(reference, "state/")
  converted = jax.eval_shape(lambda: parity_model.convert(state))
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, converted)


@pytest.mark.slow
def test_fpn_features(outputs):
  torch_out, _, jax_features = outputs
  for got, want in zip(jax_features, torch_out["features"], strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_proposals(outputs):
  torch_out, jax_out, _ = outputs
  want = torch_out["proposals"]
  valid = np.asarray(jax_out["proposal_valid"][0])
  assert valid.sum() == len(want)
  np.testing.assert_allclose(jax_out["proposals"][0][valid], want, atol=1e-2)


def test_detections(outputs):
  torch_out, jax_out, _ = outputs
  want = torch_out["detections"]
  n = int(jax_out["num_detections"][0])
  assert n == len(want["boxes"]) > 0
  np.testing.assert_allclose(jax_out["boxes"][0, :n], want["boxes"], atol=1e-2)
  np.testing.assert_allclose(jax_out["scores"][0, :n], want["scores"], atol=1e-4)
  np.testing.assert_array_equal(jax_out["classes"][0, :n], want["labels"])
  np.testing.assert_allclose(jax_out["masks"][0, :n], want["masks"], atol=1e-3)
