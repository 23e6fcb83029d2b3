"""Built-in dataset sources. Importing this package registers them."""

from trainables.data.sources import cifar, digits, fashion_mnist, imagefolder, parquet  # noqa: F401
