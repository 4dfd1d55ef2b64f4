"""Inspection of data, anchors, RPN, RoI heads, predictions and weights (`--mode=inspect`).

What matterport's `inspect_data`, `inspect_model` and `inspect_weights` notebooks show, as
pictures and tables in `WORKDIR/inspect/` and images in TensorBoard:

  data/         GT masks and boxes, class and instance-size histograms, repeat factors,
                augmentation examples                                        (data.py)
  anchors/      anchors per level; positive and negative RPN anchors, refined (model.py)
  rpn/          top proposals before and after NMS; recall of GT at IoU 0.5 / 0.7
  roi_heads/    sampled RoIs with their targets; mask targets next to the GT
  predictions/  detections with masks, per-class AP bars, the confusion matrix
  weights/      histogram and norm per layer, which layers each stage trains (weights.py)

`run.inspect` writes all of it, one `run.inspect_<section>` function per folder; the
notebooks in docs/notebooks call the same functions one by one (notebook.py: the config,
output and display they share). The other modules' functions are small and return numpy
pictures.
"""
