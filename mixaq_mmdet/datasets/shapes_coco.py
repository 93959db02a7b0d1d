"""The embedded benchmark: a deterministic COCO-format instance-segmentation set.

The pictures are built like natural photographs in the one respect MixA-Q relies on,
activation sparsity: most of the area is low-detail background (smooth gradients,
mild noise, large soft structures, some unannotated clutter) while the annotated
objects carry texture and sharp edges and cover a minority of the image. Each class
has a shape, a texture family and a typical hue of its own, as object classes in
photographs differ in all three.

Every image is drawn from its own random stream, seeded by ``(seed, split, index)``,
so the val split does not change when the train split grows and a rerun writes the
same JSON and the same pixels.
"""
import colorsys
import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

SHAPES_CLASSES: Tuple[str, ...] = ('disc', 'square', 'triangle', 'star')
TEXTURES: Tuple[str, ...] = ('stripes', 'checker', 'dots', 'grid')
CLASS_HUES: Tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
#: Each split draws its own images: 'search' (for tuning the window ratios) shares
#: no image with 'train' (training, calibration) or 'val' (the results).
SPLIT_IDS = {'train': 0, 'val': 1, 'search': 2}


@dataclass(frozen=True)
class ShapesCocoSpec:
    """What the generator draws.

    Args:
        img_size: (height, width) of every image.
        objects_per_image: inclusive range of annotated objects per image.
        object_size: inclusive range of an object's outer diameter in pixels,
            sampled log-uniformly (small to large, as in COCO).
        clutter_per_image: inclusive range of unannotated distractors.
        min_visible: an occluded object is kept only if at least this fraction of
            its own area stays visible (and at least ``min_area`` pixels).
        min_area: minimum visible area of a kept object, in pixels.
    """

    img_size: Tuple[int, int] = (320, 320)
    objects_per_image: Tuple[int, int] = (1, 6)
    object_size: Tuple[int, int] = (16, 120)
    clutter_per_image: Tuple[int, int] = (2, 6)
    min_visible: float = 0.4
    min_area: int = 40

    def __post_init__(self) -> None:
        h, w = self.img_size
        if h < 64 or w < 64:
            raise ValueError(f'img_size must be at least 64x64, got {self.img_size}')
        for name in ('objects_per_image', 'object_size', 'clutter_per_image'):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f'{name} must be an increasing non-negative range, '
                                 f'got {(lo, hi)}')
        if self.object_size[1] >= min(h, w):
            raise ValueError(f'object_size {self.object_size} does not fit in '
                             f'img_size {self.img_size}')


def _shape_polygon(rng: np.random.Generator, cls: str, center: np.ndarray,
                   diameter: float) -> np.ndarray:
    """Vertices (K, 2) in (x, y) of one shape of class ``cls``."""
    r = diameter / 2
    angle = rng.uniform(0, 2 * np.pi)
    if cls == 'disc':
        ratio = rng.uniform(0.75, 1.0)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([r * np.cos(t), r * ratio * np.sin(t)], axis=1)
    elif cls == 'square':
        s = r / np.sqrt(2)
        ratio = rng.uniform(0.8, 1.0)
        pts = np.array([[-s, -s * ratio], [s, -s * ratio], [s, s * ratio], [-s, s * ratio]])
    elif cls == 'triangle':
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif cls == 'star':
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    else:
        raise ValueError(f'unknown shape class {cls!r}, valid: {SHAPES_CLASSES}')
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T + center


def _texture(rng: np.random.Generator, h: int, w: int, cls: int) -> np.ndarray:
    """A high-contrast texture (h, w, 3) in [0, 255] of the class's family.

    Each class has its own family (stripes, checker, dots, grid) with random
    orientation and frequency, in a bright and a dark shade of a hue typical of
    the class (+-20 degrees), so objects carry detail that the low-detail
    background lacks, and class evidence lies in shape, texture and colour.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    kind = TEXTURES[cls]
    if kind == 'stripes':
        pattern = np.sin(rng.uniform(0.35, 0.9) * u) > 0
    elif kind == 'checker':
        cell = rng.uniform(3, 8)
        pattern = ((np.floor(u / cell) + np.floor(v / cell)) % 2) == 0
    elif kind == 'dots':
        period = rng.uniform(5, 10)
        radius = period * rng.uniform(0.25, 0.4)
        pattern = (((u % period) - period / 2)**2 + ((v % period) - period / 2)**2) < radius**2
    else:  # grid
        period = rng.uniform(5, 10)
        width = rng.uniform(1.2, 2.2)
        pattern = ((u % period) < width) | ((v % period) < width)
    hue = (CLASS_HUES[cls] + rng.uniform(-20, 20)) % 360
    bright = _hsv_to_bgr(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    dark = _hsv_to_bgr(hue, rng.uniform(0.6, 1.0), rng.uniform(0.15, 0.35))
    return np.where(pattern[..., None], bright, dark).astype(np.float32)


def _hsv_to_bgr(hue: float, sat: float, val: float) -> np.ndarray:
    """One colour, hue in degrees, as BGR in [0, 255]."""
    r, g, b = colorsys.hsv_to_rgb(hue / 360, sat, val)
    return np.array([b, g, r]) * 255


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth low-detail background: gradient, large soft blobs, mild noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0 = rng.uniform(40, 215, size=3)
    c1 = np.clip(c0 + rng.normal(0, 40, size=3), 0, 255)
    theta = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(theta) + yy * np.sin(theta))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(0.15, 0.35) * min(h, w)
        blob = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * sigma**2))
        img += blob[..., None] * rng.normal(0, 30, size=3)
    img += rng.normal(0, 3.0, size=img.shape)
    return img


def _draw_clutter(rng: np.random.Generator, img: np.ndarray, count: Tuple[int, int]) -> None:
    """Unannotated distractors: thin lines and flat, untextured soft ellipses."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        if rng.random() < 0.5:
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            p2 = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.line(img, p1, p2, color, thickness=int(rng.integers(1, 3)))
        else:
            layer = np.zeros((h, w), np.float32)
            center = (int(rng.integers(w)), int(rng.integers(h)))
            axes = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
            cv2.ellipse(layer, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            layer = cv2.GaussianBlur(layer, (0, 0), 2.0)[..., None]
            img[:] = img * (1 - 0.6 * layer) + np.array(color) * 0.6 * layer


def render_image(rng: np.random.Generator,
                 spec: ShapesCocoSpec) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw one image and its visible instance masks.

    Returns:
        The image (H, W, 3) uint8 in BGR order, and a list of
        (class index, visible boolean mask) in drawing order.
    """
    h, w = spec.img_size
    img = _background(rng, h, w)
    _draw_clutter(rng, img, spec.clutter_per_image)
    n_obj = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    lo, hi = np.log(spec.object_size[0]), np.log(spec.object_size[1])
    full_masks, labels = [], []
    for _ in range(n_obj):
        cls = int(rng.integers(len(SHAPES_CLASSES)))
        diameter = float(np.exp(rng.uniform(lo, hi)))
        margin = diameter / 2
        center = np.array([rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)])
        poly = _shape_polygon(rng, SHAPES_CLASSES[cls], center, diameter)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        mask = mask.astype(bool)
        if not mask.any():
            continue
        tex = _texture(rng, h, w, cls)
        img[mask] = tex[mask]
        full_masks.append(mask)
        labels.append(cls)
    instances = []
    covered = np.zeros((h, w), bool)
    for cls, mask in reversed(list(zip(labels, full_masks))):
        visible = mask & ~covered
        covered |= mask
        area = int(visible.sum())
        if area >= spec.min_area and area >= spec.min_visible * mask.sum():
            instances.append((cls, visible))
    instances.reverse()
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return img, instances


def _annotation(ann_id: int, img_id: int, cls: int, mask: np.ndarray) -> Dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
    return dict(
        id=ann_id,
        image_id=img_id,
        category_id=cls + 1,
        iscrowd=0,
        area=int(mask.sum()),
        bbox=bbox,
        segmentation=dict(size=list(rle['size']), counts=rle['counts'].decode('ascii')))


def generate_split(out_dir: str,
                   split: str,
                   num_images: int,
                   seed: int = 0,
                   spec: Optional[ShapesCocoSpec] = None) -> str:
    """Write ``num_images`` images of ``split`` and their COCO annotation file.

    Returns:
        The path of the annotation file, ``annotations/instances_{split}.json``.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f'unknown split {split!r}, valid: {sorted(SPLIT_IDS)}')
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    spec = spec or ShapesCocoSpec()
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for idx in range(num_images):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], idx])
        img, instances = render_image(rng, spec)
        img_id = idx + 1
        file_name = f'{idx:06d}.jpg'
        cv2.imwrite(osp.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=img_id, file_name=file_name, height=img.shape[0], width=img.shape[1]))
        for cls, mask in instances:
            annotations.append(_annotation(len(annotations) + 1, img_id, cls, mask))
    coco = dict(
        info=dict(description='mixaq_mmdet embedded shapes benchmark', seed=seed, split=split),
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(SHAPES_CLASSES)
        ])
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def generate(out_dir: str,
             num_train: int = 600,
             num_val: int = 200,
             seed: int = 0,
             spec: Optional[ShapesCocoSpec] = None,
             splits: Sequence[str] = ('train', 'val', 'search'),
             num_search: int = 100) -> Dict[str, str]:
    """Write the benchmark's ``splits`` under ``out_dir``.

    Returns:
        A mapping from split name to its annotation file.
    """
    sizes = dict(train=num_train, val=num_val, search=num_search)
    return {s: generate_split(out_dir, s, sizes[s], seed, spec) for s in splits}
