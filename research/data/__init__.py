"""Data: the catalog of datasets (`catalog`), one spec per dataset kind that checks, sizes and
reads it (`specs`, `corpus`, `dialogue`, `preferences`), the registry over them (`datasets`),
where raw examples come from (`sources`, offline TFDS `builders`), tokenizers, per-example
augmentations (`augment`) and the grain pipelines the trainer reads (`pipeline`)."""
