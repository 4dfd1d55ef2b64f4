import numpy as np

from maskrcnn_jax.data import predict_input
import tiny_data

S = tiny_data.S


def test_load_images(tmp_path, config):
  from PIL import Image
  Image.new("L", (20, 10), 200).save(tmp_path / "a.png")
  batch = predict_input.load_images([str(tmp_path / "a.png")], config, batch_size=2)
  assert batch["image"].shape == (2, S, S, 3) and batch["image_valid"].tolist() == [True, False]
  np.testing.assert_allclose(batch["image_info"][0], [10, 20, 64 / 20, 32, 64])
  assert (batch["image"][0, :32] == 200).all() and not batch["image"][0, 32:].any()
  assert batch["original"][0].shape == (10, 20, 3)


def test_load_images_applies_exif_orientation(tmp_path):
  """A camera JPEG stored landscape with orientation 6 (rotate 90 degrees clockwise) is
  shown, and predicted, as portrait."""
  from PIL import Image
  image = np.zeros((10, 20, 3), np.uint8)
  image[:, :10] = (250, 0, 0)  # Stored: red left half; shown: red top half.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(image).save(tmp_path / "cam.jpg", exif=exif, quality=100)
  batch = predict_input.load_images([str(tmp_path / "cam.jpg")], tiny_data.config(tmp_path),
                                    batch_size=1)
  original = batch["original"][0]
  assert original.shape == (20, 10, 3)
  np.testing.assert_allclose(batch["image_info"][0], [20, 10, S / 20, S, S / 2])
  assert original[:8, :, 0].min() > 200 and original[12:, :, 0].max() < 50
