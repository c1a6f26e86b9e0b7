"""Data: the dataset registry (`datasets`), offline TFDS builders (`builders`), per-example
augmentations (`augment`) and the grain pipelines the trainer reads (`pipeline`)."""
