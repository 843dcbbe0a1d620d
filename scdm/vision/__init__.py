"""Image datamodels: CIFAR-10 in its official format and batched ResNet-9 ensembles."""

from ._cifar import (
    BINARY_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    CLASSES,
    Cifar10,
    binary_labels,
    download_cifar10,
    find_cifar10,
    load_cifar10,
    synthetic_cifar10,
    write_cifar10,
)
from ._plots import embedding_pca, influencer_grid
from ._recipe import ImageRecipe, create_image_store
from ._resnet import GroupedResNet9, ResNet9Classifier, ResNetConfig, ResNetEnsembleTrainer
from ._trak import (
    featurized_traker,
    store_checkpoints,
    trak_scores,
    trak_self_influence,
)

__all__ = [
    "BINARY_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "CLASSES", "Cifar10", "GroupedResNet9",
    "ImageRecipe", "ResNet9Classifier", "ResNetConfig", "ResNetEnsembleTrainer", "binary_labels",
    "create_image_store", "download_cifar10", "embedding_pca",
    "featurized_traker", "find_cifar10", "influencer_grid", "load_cifar10", "store_checkpoints",
    "synthetic_cifar10", "trak_scores", "trak_self_influence", "write_cifar10",
]
