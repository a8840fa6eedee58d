"""Small real image data sets that ship inside installable packages, written as class-folder
trees for ``python -m fastdc.train --data DIR``, and the table of their runs.

    pip install scikit-image   # scikit-learn is a fastdc dependency already
    python -m benchmarks.small_data_sets export /tmp/sets
    for s in digits lfw patches_colour_a patches_colour_b patches_grey; do
        python -m fastdc.train --data /tmp/sets/$s --out /tmp/runs/$s --no-plots; done
    python -m benchmarks.small_data_sets table /tmp/runs/*

The sets (nothing is downloaded):

- ``digits``: scikit-learn's ``load_digits``, 1 797 grey 8×8 digits, 10 classes;
- ``lfw``: scikit-image's ``data.lfw_subset``, 200 grey 25×25 crops, faces / not faces;
- ``patches_colour_a`` / ``_b``: 200 colour 32×32 patches from each of the 10 colour photos
  shipped by scikit-image (astronaut, chelsea, coffee, rocket, hubble_deep_field,
  immunohistochemistry, retina, colorwheel) and scikit-learn (china, flower); a patch is a
  random square of 32-96 px resized to 32, its class the photo it comes from; ``a`` from the
  top half of each photo, ``b`` from the bottom half;
- ``patches_grey``: the same from 10 grey photos of scikit-image (brick, grass, gravel,
  camera, coins, moon, page, text, clock, cell).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PATCHES, PATCH_SIDE = 200, 32
GREY_PHOTOS = ("brick", "grass", "gravel", "camera", "coins", "moon", "page", "text", "clock",
               "cell")


def write_tree(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """uint8 [N, H, W(, 3)] images as root/<names[label]>/<index>.png."""
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    print(f"{root}: {len(images)} images {images.shape[1:]}, {len(names)} classes")


def patches(photos: list[np.ndarray], half: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:data:`PATCHES` random squares of 32-96 px, resized to 32, from the top (half 0) or
    bottom (half 1) half of each photo: (uint8 [P·n, 32, 32(, 3)], int64 [P·n] photo ids)."""
    rng = np.random.default_rng(seed)
    out, ids = [], []
    for y, photo in enumerate(photos):
        mid = photo.shape[0] // 2
        part = photo[:mid] if half == 0 else photo[mid:]
        for _ in range(PATCHES):
            s = int(rng.integers(PATCH_SIDE, min(3 * PATCH_SIDE, *part.shape[:2]) + 1))
            r = int(rng.integers(0, part.shape[0] - s + 1))
            c = int(rng.integers(0, part.shape[1] - s + 1))
            tile = Image.fromarray(part[r:r + s, c:c + s])
            out.append(np.asarray(tile.resize((PATCH_SIDE, PATCH_SIDE),
                                              Image.Resampling.BILINEAR)))
            ids.append(y)
    return np.stack(out), np.array(ids)


def export(root: Path) -> None:
    """Write every set of the module docstring under ``root``."""
    from skimage import data
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    write_tree(root / "digits", (digits.images * 255 / 16).round().astype(np.uint8),
               digits.target, [str(d) for d in range(10)])
    faces = (data.lfw_subset() * 255).round().astype(np.uint8)
    write_tree(root / "lfw", faces, np.repeat([0, 1], 100), ["face", "nonface"])
    colour = {name: getattr(data, name)() for name in
              ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
               "immunohistochemistry", "retina", "colorwheel")}
    colour["china"], colour["flower"] = load_sample_images().images
    for half, name in ((0, "patches_colour_a"), (1, "patches_colour_b")):
        x, y = patches(list(colour.values()), half, seed=half)
        write_tree(root / name, x, y, list(colour))
    x, y = patches([getattr(data, name)() for name in GREY_PHOTOS], 0, seed=2)
    write_tree(root / "patches_grey", x, y, list(GREY_PHOTOS))


def table(runs: list[Path]) -> None:
    """A Markdown row per run folder: settings chosen, wall time, NMI and probe."""
    print("| run | images | classes | arch, px, k, epochs | wall s | NMI trained / init / "
          "pixels | probe trained / init / pixels |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        c, ev = s["config"], s["final_evaluation"] or {}
        cols = [n for n in ("trained", "random init", "raw pixels") if n in ev]
        nmi = " / ".join(f"{ev[n]['kmeans_nmi']:.3f}" for n in cols)
        probe = " / ".join(f"{ev[n]['linear_probe_acc']:.3f}" for n in cols)
        print(f"| {run.name} | {s['data']['images']} | {s['data']['classes']} | {c['arch']}, "
              f"{c['image_size']}, {c['k']}, {c['epochs']} | {s['wall_time_s']:.0f} | {nmi} | "
              f"{probe} |")


def main(argv: list[str]) -> int:
    """``export DIR`` or ``table RUN...``; returns the exit status."""
    if len(argv) >= 2 and argv[0] == "export":
        export(Path(argv[1]))
        return 0
    if len(argv) >= 2 and argv[0] == "table":
        table([Path(p) for p in argv[1:]])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
