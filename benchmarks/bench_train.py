"""The trainer's two hot loops, fastdc vs DeepCluster's original pipeline, on this machine.

1. Clustering step, features -> labels (N=10 000 features of D=256, k=100, 20 iterations):
   fastdc ``pca_whiten`` + ``kmeans`` (C++ backend on CPU tensors, Triton/CUDA on GPU tensors)
   vs the reference ``preprocess_features`` + ``run_kmeans`` of DeepCluster's clustering.py:
   faiss ``PCAMatrix(D, 256, eigen_power=-0.5)``, row L2 norm, ``faiss.Kmeans`` with
   ``max_points_per_centroid`` = 10^7 (no subsampling).
2. Training images/s on MNIST-size images (the default ``python -m fastdc.train`` model, with
   the Sobel front end, batch 128): fastdc's in-memory batched random-resized crops + grey Sobel
   vs torchvision transforms per PIL image (RandomResizedCrop, ToTensor, Normalize) through a
   DataLoader + DeepCluster's two-convolution Sobel on the channel replicated to RGB.

Sizes are small so that the file runs in well under two minutes on the 2-core CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.deepcluster.data import load_mnist, random_resized_crop
from fastdc.deepcluster.models import small
from fastdc.ops.sobel import sobel_weights

N_FEAT, D_FEAT, K, NITER, PCA_DIM = 10_000, 256, 100, 20, 256
N_TRAIN, BATCH, STEPS = 1024, 128, 8
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CLUSTER_TABLE = f"train_cluster_step_{N_FEAT // 1000}k_{D_FEAT}_{K}"
TRAIN_TABLE = "train_images_per_s_mnist_small_sobel"


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Clustered, CNN-like features: a 300-Gaussian mixture, ReLU-ed, float32 [N, D]."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, D_FEAT), dtype=np.float32)
    x = centres[rng.integers(300, size=N_FEAT)] + 0.7 * rng.standard_normal(
        (N_FEAT, D_FEAT), dtype=np.float32)
    return np.ascontiguousarray(np.maximum(x, 0), dtype=np.float32)


def _cluster_row(name: str, seconds: float, labels: np.ndarray) -> None:
    record(CLUSTER_TABLE, {"name": name, "time_s": seconds,
                           "nonempty": int(len(np.unique(labels)))},
           reference="faiss (DeepCluster)",
           note=f"features->labels: PCA-whiten to {PCA_DIM} + L2 + k-means, N={N_FEAT} "
                f"D={D_FEAT} k={K} niter={NITER}, device {DEVICE.type}")


def test_cluster_step_fastdc(features):
    from fastdc.engine import pca_whiten
    from fastdc.kmeans import kmeans

    x = torch.from_numpy(features).to(DEVICE)

    def step():
        res = kmeans(pca_whiten(x, dim=PCA_DIM), K, niter=NITER, seed=0)
        return res.assignments.cpu().numpy()

    # warm-up: thread pools, kernel compilation on a GPU
    run = measure(step, rounds=3, warmup=1)
    _cluster_row(f"fastdc ({DEVICE.type})", run.best, run.result)
    assert run.result.shape == (N_FEAT,)


def test_cluster_step_faiss_reference(features):
    faiss = pytest.importorskip("faiss")

    def step():
        # DeepCluster clustering.py: preprocess_features, then run_kmeans.
        pca = faiss.PCAMatrix(D_FEAT, PCA_DIM, -0.5)  # eigen_power -0.5
        pca.train(features)
        assert pca.is_trained
        x = pca.apply_py(features)
        x = x / np.linalg.norm(x, axis=1)[:, None]
        clus = faiss.Clustering(PCA_DIM, K)
        clus.seed = 0
        clus.niter = NITER
        clus.max_points_per_centroid = 10_000_000
        index = faiss.IndexFlatL2(PCA_DIM)
        clus.train(x.astype(np.float32), index)
        _, labels = index.search(x.astype(np.float32), 1)
        return labels[:, 0]

    run = measure(step, rounds=3, warmup=1)
    _cluster_row("faiss (DeepCluster)", run.best, run.result)
    assert run.result.shape == (N_FEAT,)


def _train_row(name: str, seconds_per_step: float) -> None:
    record(TRAIN_TABLE, {"name": name, "time_per_batch_s": seconds_per_step,
                         "images_per_s": BATCH / seconds_per_step},
           reference="torchvision + two-conv Sobel",
           note=f"small net + Sobel, 28x28 grey, batch {BATCH}, augmentation + forward + "
                f"backward + SGD step, device {DEVICE.type}")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(subset=N_TRAIN, crop_scale=(0.5, 1.0), flip=False)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)


def test_train_fastdc(mnist):
    torch.manual_seed(0)
    model = small(100, in_channels=1, sobel=True).to(DEVICE).train()
    opt = _sgd(model)
    order = np.random.default_rng(0).integers(0, N_TRAIN, STEPS * BATCH)
    targets = torch.randint(0, 100, (N_TRAIN,)).to(DEVICE)

    def epoch():
        batches = mnist.train_batches(order, BATCH, seed=0, epoch=0, device=DEVICE)
        _sgd_steps(model, opt, ((b.images, targets[b.index.to(DEVICE)]) for b in batches))

    seconds = measure(epoch, rounds=3, warmup=1).best
    _train_row("fastdc (batched crops + grey Sobel)", seconds / STEPS)
    assert torch.isfinite(next(model.parameters())).all()


def _sgd_steps(model, opt, batches) -> None:
    """One cross-entropy SGD step per (images, targets) batch, then a device sync."""
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class _TwoConvSobelNet(torch.nn.Module):
    """DeepCluster's front end: grey = 1×1 conv (1/3 each) on RGB, then the 3×3 Sobel conv;
    then the same body/classifier as fastdc's small net."""

    def __init__(self):
        super().__init__()
        self.net = small(100, in_channels=1, sobel=True)
        self.net.sobel = None
        grey, filt = sobel_weights()
        self.register_buffer("grey", grey)
        self.register_buffer("filt", filt)

    def forward(self, x):
        x = F.conv2d(F.conv2d(x, self.grey), self.filt, padding=1)
        return self.net(x)


def test_train_torchvision_reference(mnist):
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    pil = [Image.fromarray(img[..., 0]) for img in mnist.thumbnails(np.arange(N_TRAIN))]
    tf = T.Compose([T.RandomResizedCrop(28, scale=(0.5, 1.0)), T.ToTensor(),
                    T.Normalize(mnist.mean, mnist.std)])
    order = np.random.default_rng(0).integers(0, N_TRAIN, STEPS * BATCH)

    class Reassigned(Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            return tf(pil[order[i]]), int(order[i]) % 100

    torch.manual_seed(0)
    model = _TwoConvSobelNet().to(DEVICE).train()
    opt = _sgd(model)
    loader = DataLoader(Reassigned(), batch_size=BATCH, num_workers=0)

    def epoch():
        # grey -> RGB, as ImageFolder gives
        _sgd_steps(model, opt, ((x.to(DEVICE).expand(-1, 3, -1, -1), y.to(DEVICE))
                                for x, y in loader))

    seconds = measure(epoch, rounds=3, warmup=1).best
    _train_row("torchvision + two-conv Sobel", seconds / STEPS)
    assert torch.isfinite(next(model.parameters())).all()


def test_augmentation_alone(mnist):
    """Crops only (no model): where the pipelines differ."""
    x = mnist.normalised(DEVICE)[:BATCH]
    gen = torch.Generator().manual_seed(0)
    run = measure(lambda: random_resized_crop(x, gen, scale=(0.5, 1.0), flip=False), rounds=20)
    record(TRAIN_TABLE, {"name": "fastdc crops only", "time_per_batch_s": run.best,
                         "images_per_s": BATCH / run.best})
    assert run.result.shape == x.shape
