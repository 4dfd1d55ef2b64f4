"""Pretrained weights: torchvision conversion (`convert_torchvision`) and loading (`load`)."""
