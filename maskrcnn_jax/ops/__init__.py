"""Static-shape detection ops in pure JAX: anchors, box geometry and coding, convolution,
matching and sampling, padded NMS, RoIAlign. Each follows torchvision's arithmetic (tests
compare them)."""
