"""Images from bytes to the model's input: decoding, EXIF orientation and the resize rule.

Decoding. `pixels.decode` (PIL) turns any file into the RGB pixels a viewer shows: its
EXIF orientation applied. The build stores those pixels (`coco_reader`: an RGB JPEG without
an orientation as it is, any other image losslessly as PNG), and `decode_tf` reads the
stored bytes with libjpeg's accurate DCT, which gives PIL's pixels exactly; prediction calls
`pixels.decode` on the file. So an image has the same pixels in training, evaluation and
prediction.

Resizing (`data.resize`), with the same functions in training, evaluation, prediction and
inspection:

  longest        longest side to `data.image_size`; canvas S × S
  shortest_edge  shortest side to `data.min_size`, longest at most `data.max_size`
                 (detectron2's ResizeShortestEdge, torchvision's GeneralizedRCNNTransform);
                 canvas max_size × max_size rounded up to a multiple of STRIDE (two
                 canvases with `data.aspect_grouping`, below)
  square         matterport's "square" mode: shortest side up to `data.min_size` (never
                 down), longest at most `data.max_size`; canvas max_size², rounded up

With `data.aspect_grouping` (shortest_edge only) there are two canvases: landscape images
(width >= height) go on Hl × Wl, with Hl the largest `data.min_size` and Wl `data.max_size`,
each rounded up to a multiple of STRIDE, and portrait images on Wl × Hl (at 800/1333:
832 × 1344 instead of 1344²). Batches hold one orientation (`sampler.grouped`,
`sampler.is_portrait`). With longest and square a square image fills S × S in either
orientation, so a second canvas would save nothing: the config check refuses grouping there.

`data.min_size` is a tuple: training draws one per image from the image's key (detectron2's
"choice" sample style), evaluation and prediction take the largest. The resized size is
round-half-up(side × scale) (detectron2's `int(x + 0.5)`), and the image is resampled
bilinearly to it, so that each axis scales by its own ratio resized / original, as the
references rescale images, boxes and detections (torchvision floors instead: its sizes may
differ by a pixel).
"""

import ml_collections
import tensorflow as tf

from maskrcnn_jax.models import rpn

# Canvas sides are multiples of P6's stride, so that every FPN level halves exactly.
STRIDE = rpn.STRIDES[-1]


def decode_tf(data: tf.Tensor) -> tf.Tensor:
  """Stored image bytes (JPEG or PNG, see the module docstring) -> [H, W, 3] uint8, the
  pixels PIL decodes."""
  return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")


def _round_up(side: int) -> int:
  return -(-side // STRIDE) * STRIDE


def canvas(data_config: ml_collections.ConfigDict, portrait: bool = False) -> tuple[int, int]:
  """(height, width) of the padded model input of a landscape or, with `portrait`, a portrait
  image: every resized image of that orientation fits in it. Without `data.aspect_grouping`
  both orientations share one canvas."""
  if data_config.resize == "longest":
    return data_config.image_size, data_config.image_size
  long = _round_up(data_config.max_size)
  if data_config.resize == "square" or not data_config.aspect_grouping:
    return long, long
  short = _round_up(max(data_config.min_size))
  return (long, short) if portrait else (short, long)


def scale(height, width, data_config: ml_collections.ConfigDict, min_size=None) -> tf.Tensor:
  """Original (height, width) -> the rule's float64 scale; `min_size` overrides the largest
  of `data.min_size` (a training draw)."""
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  if data_config.resize == "longest":
    return data_config.image_size / long
  target = tf.cast(max(data_config.min_size) if min_size is None else min_size, tf.float64)
  s = target / short
  if data_config.resize == "square":
    s = tf.maximum(s, 1.0)
  return tf.where(long * s > data_config.max_size, data_config.max_size / long, s)


def draw_min_size(data_config: ml_collections.ConfigDict, seed: tf.Tensor) -> tf.Tensor:
  """One of `data.min_size`, uniformly, from a stateless seed [2]."""
  sizes = tf.constant(data_config.min_size, tf.int32)
  return sizes[tf.random.stateless_uniform([], seed, 0, len(data_config.min_size), tf.int32)]


def resized_size(height, width, s) -> tuple[tf.Tensor, tf.Tensor]:
  """(round-half-up(height × s), the same for width), at least 1, int32."""
  size = lambda x: tf.maximum(tf.cast(tf.floor(tf.cast(x, tf.float64) * s + 0.5), tf.int32), 1)
  return size(height), size(width)


def resize(image: tf.Tensor, new_h, new_w) -> tf.Tensor:
  """[H, W, 3] -> [new_h, new_w, 3] float32, bilinear (half-pixel centres, no antialiasing:
  torchvision's `interpolate(mode="bilinear", align_corners=False)`)."""
  return tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]),
                         method="bilinear")


def to_canvas(image: tf.Tensor, size) -> tf.Tensor:
  """A resized float32 image [h, w, 3] inside the canvas `size` (Hc, Wc: ints, or int32
  tensors) -> [Hc, Wc, 3] uint8, rounded to the nearest value and zero-padded bottom and
  right."""
  image = tf.saturate_cast(image + 0.5, tf.uint8)  # Rounds: the values are clamped first.
  image = tf.image.pad_to_bounding_box(image, 0, 0, size[0], size[1])
  image.set_shape([None if tf.is_tensor(s) else s for s in size] + [3])
  return image
