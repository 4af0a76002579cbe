"""Real photographs that ship inside pip packages, and their fixed train/test split.

The photos are read with Pillow straight from the installed packages' folders, so nothing
is ever downloaded (``skimage.data``'s own loaders may fetch from the network; we never call
them). Only natural photographs and textures are used; synthetic images (chessboard, logo,
phantom, color wheel, binary horse silhouette) are left out because their few distinct
values would dominate a density model's likelihood.

Sources (name: file):

- scikit-image ``skimage/data``: astronaut, chelsea, coffee, hubble_deep_field, ihc,
  motorcycle_left, motorcycle_right, retina, rocket (RGB); brick, camera, cell,
  clock_motion, coins, grass, gravel, microaneurysms, moon, page, text (greyscale).
- scikit-learn ``sklearn/datasets/images``: china, flower (RGB).
- matplotlib ``mpl-data/sample_data``: grace_hopper (RGB).

The split is by source photo, so no test patch ever shares a photo with a training patch:
test = china, chelsea, coffee, rocket, ihc (RGB) and camera, coins (greyscale); every
other photo is train. This puts about 20% of the 32x32 patches in test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from msflow._optional import missing, pip_name
from msflow.errors import DataError

# name -> (package, folder inside the package, file name, is the photo colour)
_SOURCES: dict[str, tuple[str, str, str, bool]] = {
    "astronaut": ("skimage", "data", "astronaut.png", True),
    "chelsea": ("skimage", "data", "chelsea.png", True),
    "coffee": ("skimage", "data", "coffee.png", True),
    "hubble_deep_field": ("skimage", "data", "hubble_deep_field.jpg", True),
    "ihc": ("skimage", "data", "ihc.png", True),
    "motorcycle_left": ("skimage", "data", "motorcycle_left.png", True),
    "motorcycle_right": ("skimage", "data", "motorcycle_right.png", True),
    "retina": ("skimage", "data", "retina.jpg", True),
    "rocket": ("skimage", "data", "rocket.jpg", True),
    "china": ("sklearn", "datasets/images", "china.jpg", True),
    "flower": ("sklearn", "datasets/images", "flower.jpg", True),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg", True),
    "brick": ("skimage", "data", "brick.png", False),
    "camera": ("skimage", "data", "camera.png", False),
    "cell": ("skimage", "data", "cell.png", False),
    "clock_motion": ("skimage", "data", "clock_motion.png", False),
    "coins": ("skimage", "data", "coins.png", False),
    "grass": ("skimage", "data", "grass.png", False),
    "gravel": ("skimage", "data", "gravel.png", False),
    "microaneurysms": ("skimage", "data", "microaneurysms.png", False),
    "moon": ("skimage", "data", "moon.png", False),
    "page": ("skimage", "data", "page.png", False),
    "text": ("skimage", "data", "text.png", False),
}

_TEST_PHOTOS = frozenset({"china", "chelsea", "coffee", "rocket", "ihc", "camera", "coins"})

PHOTO_SPLIT: MappingProxyType[str, str] = MappingProxyType(
    {name: ("test" if name in _TEST_PHOTOS else "train") for name in _SOURCES}
)
"""Photo name -> ``"train"`` or ``"test"``, in the fixed order patches are cut in."""


PHOTOGRAPHS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "motorcycle_left", "motorcycle_right", "rocket", "china", "flower", "grace_hopper"
)  # fmt: skip
"""The colour photographs the image-to-image tasks train and test on, in split order.

Three colour images are left out of the tasks because they are not photographs of everyday
scenes and their colours skew a model: the Hubble deep field (mostly black), the retina
fundus (mostly red) and the IHC micrograph. With one random crop per draw from a uniformly
chosen photo, each of the 5 training photos gives 20% of the training crops (the offline
packages ship no more colour photographs). Mean colour (R, G, B) of the photos' pixels:
train (107, 91, 84), test (126, 101, 90); before this selection the training crops averaged
(117, 65, 55), mostly retina.
"""


def photo_path(name: str) -> Path:
    """Where the bundled photo ``name`` lies on disk.

    The package is located with ``importlib.util.find_spec`` rather than imported, because
    importing scikit-learn or matplotlib just to find one file costs about a second.

    Example:
        >>> photo_path("camera").name
        'camera.png'
    """
    if name not in _SOURCES:
        raise DataError(f"unknown bundled photo {name!r}: choose one of {', '.join(_SOURCES)}")
    package, folder, file, _ = _SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise missing(package, "data", f"bundled photo {name!r}")
    return Path(spec.origin).parent / folder / file


def _read(name: str, grey: bool) -> np.ndarray:
    path = photo_path(name)
    try:
        with Image.open(path) as im:
            # Pillow's "L" conversion is the ITU-R 601 luma Y = 0.299 R + 0.587 G + 0.114 B.
            array = np.array(im.convert("L" if grey else "RGB"))
    except FileNotFoundError:
        raise DataError(
            f"bundled photo {path} is missing: reinstall the package "
            f"(pip install --force-reinstall {pip_name(_SOURCES[name][0])})"
        ) from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read bundled photo {path}: {err}; reinstall the package that ships it") from err
    return array[:, :, None] if grey else array


def bundled_photos(grey: bool = False) -> dict[str, np.ndarray]:
    """The bundled photos as ``uint8`` arrays ``(H, W, C)``, keyed by name in split order.

    Args:
        grey: ``False`` gives the 12 colour photos as RGB (C = 3); ``True`` gives all 23
            photos as greyscale (C = 1): grey photos as they are, colour ones converted to
            ITU-R 601 luma.

    Returns:
        A fresh dict (safe to modify) ordered like :data:`PHOTO_SPLIT`.

    Example:
        >>> photos = bundled_photos(grey=True)
        >>> photos["camera"].shape, photos["camera"].dtype
        ((512, 512, 1), dtype('uint8'))
    """
    return {name: _read(name, grey) for name, (*_, colour) in _SOURCES.items() if grey or colour}
