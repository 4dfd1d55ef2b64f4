"""State dicts in torchvision's key layout, filled with small random values (no torch)."""

import pickle
import struct
import zipfile

import numpy as np

from maskrcnn_jax.models import resnet


def _bn(state, prefix, channels, rng):
  state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
  state[f"{prefix}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
  state[f"{prefix}.running_mean"] = rng.normal(0, 0.1, channels).astype(np.float32)
  state[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
  state[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)


def _w(rng, *shape):
  return rng.normal(0, 0.01, shape).astype(np.float32)


def resnet_state(depth: int, rng, prefix: str = "", fc: bool = True) -> dict[str, np.ndarray]:
  """A torchvision `resnet{depth}()` state dict with small random values."""
  block, counts = resnet.SPECS[depth]
  bottleneck = block is resnet.Bottleneck
  state = {f"{prefix}conv1.weight": _w(rng, 64, 3, 7, 7)}
  _bn(state, f"{prefix}bn1", 64, rng)
  cin = 64
  for layer, count in enumerate(counts, 1):
    width = 64 * 2**(layer - 1)
    cout = width * (4 if bottleneck else 1)
    for i in range(count):
      src = f"{prefix}layer{layer}.{i}"
      if bottleneck:
        shapes = [(width, cin, 1, 1), (width, width, 3, 3), (cout, width, 1, 1)]
      else:
        shapes = [(width, cin, 3, 3), (width, width, 3, 3)]
      for j, shape in enumerate(shapes, 1):
        state[f"{src}.conv{j}.weight"] = _w(rng, *shape)
        _bn(state, f"{src}.bn{j}", shape[0], rng)
      if i == 0 and (layer > 1 or cin != cout):
        state[f"{src}.downsample.0.weight"] = _w(rng, cout, cin, 1, 1)
        _bn(state, f"{src}.downsample.1", cout, rng)
      cin = cout
  if fc:
    state["fc.weight"], state["fc.bias"] = _w(rng, 1000, cin), _w(rng, 1000)
  return state


def mask_rcnn_state(depth, rng, *, channels, fc_dim, mask_convs, mask_channels, num_classes,
                    old_keys=False):
  """A torchvision Mask R-CNN state dict; `old_keys` uses the v1 checkpoint names."""
  state = resnet_state(depth, rng, prefix="backbone.body.", fc=False)
  inner = "" if old_keys else ".0"
  for i, cin in enumerate(resnet.out_channels(depth)):
    state[f"backbone.fpn.inner_blocks.{i}{inner}.weight"] = _w(rng, channels, cin, 1, 1)
    state[f"backbone.fpn.inner_blocks.{i}{inner}.bias"] = _w(rng, channels)
    state[f"backbone.fpn.layer_blocks.{i}{inner}.weight"] = _w(rng, channels, channels, 3, 3)
    state[f"backbone.fpn.layer_blocks.{i}{inner}.bias"] = _w(rng, channels)
  rpn_conv = "rpn.head.conv" if old_keys else "rpn.head.conv.0.0"
  state[f"{rpn_conv}.weight"] = _w(rng, channels, channels, 3, 3)
  state[f"{rpn_conv}.bias"] = _w(rng, channels)
  for name, out in (("cls_logits", 3), ("bbox_pred", 12)):
    state[f"rpn.head.{name}.weight"] = _w(rng, out, channels, 1, 1)
    state[f"rpn.head.{name}.bias"] = _w(rng, out)
  for name, shape in (("box_head.fc6", (fc_dim, channels * 49)),
                      ("box_head.fc7", (fc_dim, fc_dim)),
                      ("box_predictor.cls_score", (num_classes, fc_dim)),
                      ("box_predictor.bbox_pred", (4 * num_classes, fc_dim))):
    state[f"roi_heads.{name}.weight"] = _w(rng, *shape)
    state[f"roi_heads.{name}.bias"] = _w(rng, shape[0])
  cin = channels
  for i in range(mask_convs):
    name = f"mask_fcn{i + 1}" if old_keys else f"{i}.0"
    state[f"roi_heads.mask_head.{name}.weight"] = _w(rng, mask_channels, cin, 3, 3)
    state[f"roi_heads.mask_head.{name}.bias"] = _w(rng, mask_channels)
    cin = mask_channels
  state["roi_heads.mask_predictor.conv5_mask.weight"] = _w(rng, cin, mask_channels, 2, 2)
  state["roi_heads.mask_predictor.conv5_mask.bias"] = _w(rng, mask_channels)
  state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = _w(rng, num_classes,
                                                                mask_channels, 1, 1)
  state["roi_heads.mask_predictor.mask_fcn_logits.bias"] = _w(rng, num_classes)
  return state


_STORAGES = {np.dtype(t): f"{n}Storage" for t, n in (
    (np.float32, "Float"), (np.float16, "Half"), (np.int64, "Long"), (np.bool_, "Bool"))}


def _text(s: str) -> bytes:
  return b"X" + struct.pack("<I", len(s)) + s.encode()


def write_pth(path: str, state: dict[str, np.ndarray], *, tensor=None,
              legacy: bool = False) -> None:
  """`state` as torch.save writes a state dict, without torch: the zip format, or with
  `legacy` the format before torch 1.6 (`_use_new_zipfile_serialization=False`).

  `tensor(key, array, storage_opcodes) -> opcodes or None` may replace how an entry is
  pickled.
  """
  hooks = b"ccollections\nOrderedDict\n)R"
  items, storages = b"", []
  for i, (key, array) in enumerate(state.items()):
    array = np.array(array, order="C")
    storages.append(array)
    # ("storage", class, key, location, element count[, view metadata: legacy only]).
    storage = (b"(" + _text("storage") + b"ctorch\n" + _STORAGES[array.dtype].encode()
               + b"\n" + _text(str(i)) + _text("cpu") + b"J" + struct.pack("<i", array.size)
               + (b"N" if legacy else b"") + b"tQ")
    strides = [s // array.itemsize for s in array.strides]
    ints = lambda t: b"(" + b"".join(b"J" + struct.pack("<i", n) for n in t) + b"t"
    opcodes = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00" + ints(array.shape)
               + ints(strides) + b"\x89" + hooks + b"tR")
    items += _text(key) + ((tensor and tensor(key, array, storage)) or opcodes)
  data = b"\x80\x02" + hooks + b"(" + items + b"u."
  if legacy:
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    with open(path, "wb") as f:
      for head in (0x1950a86a20f9469cfc6c, 1001, sys_info):
        f.write(pickle.dumps(head, protocol=2))
      keys = sorted(str(i) for i in range(len(storages)))  # torch writes them sorted.
      f.write(data + pickle.dumps(keys, protocol=2))
      for key in keys:
        array = storages[int(key)]
        f.write(struct.pack("<q", array.size) + array.tobytes())
    return
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    for i, array in enumerate(storages):
      z.writestr(f"archive/data/{i}", array.tobytes())
    z.writestr("archive/data.pkl", data)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
