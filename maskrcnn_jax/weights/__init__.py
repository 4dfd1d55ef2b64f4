"""Variables on disk: checkpoints (`checkpoint`), torchvision conversion (`convert_torchvision`)
and loading into a model (`load`)."""
