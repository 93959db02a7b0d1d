"""A small data set in COCO 2017's exact layout, for full-size smoke runs of the
COCO configs (``configs/mixaq``) without the real COCO.

``data/coco/annotations/instances_{train,val}2017.json``, ``train2017/`` and
``val2017/`` as mmdet's COCO configs expect them: the 80 COCO categories with
their real, non-contiguous ids (1..90 with gaps) and names in mmdet's
``CocoDataset.METAINFO['classes']`` order, COCO-like image sizes (640x480,
480x640, 640x427, ...), 12-digit zero-padded file names, polygon masks,
compressed-RLE masks, crowd regions (``iscrowd=1``, uncompressed RLE as COCO
stores them) and images without annotations.

The train annotation file lists many more images (default 2000) than are
written (default 8): a tool that takes a subset of train2017 (calibration, the
ratio search) really takes a subset. Only the FIRST ``num_train_files`` entries
of ``images`` have files, and none of them is empty of annotations or smaller
than 32 px, so mmdet's train filter (``filter_empty_gt=True, min_size=32``)
keeps them all, in order, at the front. A dataloader reads exactly the written
files when its dataset is given mmengine's ``indices=num_train_files`` (applied
after filtering, in test mode and in training mode alike), e.g.::

    --cfg-options train_dataloader.dataset.indices=8 \\
        test_cfg.calib_dataloader.dataset.indices=8 \\
        search_dataloader.dataset.indices=8

Without it the loader reaches listed-only entries, whose files do not exist.
The listed-only entries carry annotations as the written ones do (every fourth
carries none, so the filter has something to remove); their annotations never
depend on how many files are written, except that a written entry is never one
of those empty ones. All val images are written; every fourth is empty.

Every entry has its own random streams, seeded by ``(seed, split, index)``: one
for its layout (size, objects, annotations), one for its pixels. A rerun writes
the same JSON and the same pixels, and the first N entries do not change when
more entries are listed or written.
"""
import glob
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .shapes_coco import SHAPES_CLASSES, _background, _draw_clutter, _shape_polygon, _texture

#: COCO 2017's 80 instance categories: (id, name, supercategory), in id order,
#: which is the order of mmdet's ``CocoDataset.METAINFO['classes']``.
COCO_CATEGORIES: Tuple[Tuple[int, str, str], ...] = (
    (1, 'person', 'person'), (2, 'bicycle',
                              'vehicle'), (3, 'car', 'vehicle'),
    (4, 'motorcycle',
     'vehicle'), (5, 'airplane', 'vehicle'),
    (6, 'bus', 'vehicle'), (7, 'train', 'vehicle'),
    (8, 'truck', 'vehicle'), (9, 'boat', 'vehicle'),
    (10, 'traffic light', 'outdoor'), (11, 'fire hydrant', 'outdoor'), (13, 'stop sign', 'outdoor'),
    (14, 'parking meter', 'outdoor'), (15, 'bench', 'outdoor'), (16, 'bird', 'animal'),
    (17, 'cat', 'animal'), (18, 'dog',
                            'animal'), (19, 'horse',
                                        'animal'),
    (20, 'sheep', 'animal'), (21, 'cow', 'animal'), (22, 'elephant',
                                                     'animal'),
    (23, 'bear', 'animal'), (24, 'zebra', 'animal'), (25, 'giraffe',
                                                      'animal'), (27, 'backpack',
                                                                  'accessory'), (28, 'umbrella',
                                                                                 'accessory'),
    (31, 'handbag',
     'accessory'), (32, 'tie', 'accessory'), (33, 'suitcase',
                                              'accessory'),
    (34, 'frisbee',
     'sports'), (35, 'skis', 'sports'), (36, 'snowboard', 'sports'), (37, 'sports ball', 'sports'),
    (38, 'kite', 'sports'), (39, 'baseball bat', 'sports'), (40, 'baseball glove',
                                                             'sports'),
    (41, 'skateboard',
     'sports'), (42, 'surfboard',
                 'sports'), (43, 'tennis racket',
                             'sports'), (44, 'bottle',
                                         'kitchen'), (46, 'wine glass',
                                                      'kitchen'), (47, 'cup', 'kitchen'),
    (48, 'fork', 'kitchen'), (49, 'knife',
                              'kitchen'), (50, 'spoon',
                                           'kitchen'), (51, 'bowl',
                                                        'kitchen'), (52, 'banana',
                                                                     'food'), (53, 'apple', 'food'),
    (54, 'sandwich', 'food'), (55, 'orange',
                               'food'), (56, 'broccoli', 'food'), (57, 'carrot',
                                                                   'food'), (58, 'hot dog', 'food'),
    (59, 'pizza',
     'food'), (60, 'donut',
               'food'), (61, 'cake', 'food'), (62, 'chair',
                                               'furniture'), (63, 'couch',
                                                              'furniture'), (64, 'potted plant',
                                                                             'furniture'),
    (65, 'bed', 'furniture'), (67, 'dining table',
                               'furniture'), (70, 'toilet', 'furniture'), (72, 'tv', 'electronic'),
    (73, 'laptop', 'electronic'), (74, 'mouse', 'electronic'), (75, 'remote', 'electronic'),
    (76, 'keyboard', 'electronic'), (77, 'cell phone', 'electronic'), (78, 'microwave',
                                                                       'appliance'), (79, 'oven',
                                                                                      'appliance'),
    (80, 'toaster', 'appliance'), (81, 'sink', 'appliance'), (82, 'refrigerator',
                                                              'appliance'), (84, 'book', 'indoor'),
    (85, 'clock', 'indoor'), (86, 'vase',
                              'indoor'), (87, 'scissors',
                                          'indoor'), (88, 'teddy bear',
                                                      'indoor'), (89, 'hair drier',
                                                                  'indoor'), (90, 'toothbrush',
                                                                              'indoor'))
COCO_CATEGORY_IDS: Tuple[int, ...] = tuple(c[0] for c in COCO_CATEGORIES)
COCO_CLASSES: Tuple[str, ...] = tuple(c[1] for c in COCO_CATEGORIES)
#: (width, height) of the images, sizes frequent in COCO 2017.
COCO_IMAGE_SIZES: Tuple[Tuple[int, int], ...] = ((640, 480), (480, 640), (640, 427), (427, 640),
                                                 (640, 426), (500, 375), (375, 500), (640, 360))
#: Starts ``info['description']``; the generator rewrites only its own output.
FIXTURE_MARK = 'mixaq_mmdet COCO-layout fixture'
SPLITS = {'train2017': 0, 'val2017': 1}
#: Entry kinds by ``index % 4``: the first annotation of a 0 is compressed RLE,
#: a 1 has a crowd region, a 2 has no annotation (val, listed-only train).
_RLE_FIRST, _CROWD, _EMPTY = 0, 1, 2
#: Image ids: ``_ID_ROOT ** (2 * index + split + offset) mod _ID_PRIME``, a
#: prime just above COCO's largest id (581929) and a primitive root of it: ids
#: unique within and across splits, scattered like COCO's, stable when a split
#: grows.
_ID_PRIME, _ID_ROOT = 581941, 7
#: Crowd annotations get ids from here, as in COCO (900100000000 + ...).
_CROWD_ID_BASE = 900100000000


def _image_id(seed: int, split: str, index: int) -> int:
    """COCO-like image id of entry ``index`` of ``split``."""
    offset = int(np.random.default_rng([seed, 99]).integers(_ID_PRIME - 1))
    k = 2 * index + SPLITS[split]
    if k >= _ID_PRIME - 1:
        raise ValueError(f'at most {_ID_PRIME // 2 - 1} entries per split, got '
                         f'index {index}')
    return pow(_ID_ROOT, (k + offset) % (_ID_PRIME - 1), _ID_PRIME)


def _place(rng: np.random.Generator,
           w: int,
           h: int,
           radius: float,
           taken: List[Tuple[float, float, float]],
           tries: int = 30) -> Optional[np.ndarray]:
    """A center for a disc of ``radius`` inside the image, clear of ``taken``."""
    for _ in range(tries):
        c = np.array(
            [rng.uniform(radius + 1, w - radius - 1),
             rng.uniform(radius + 1, h - radius - 1)])
        if all(np.hypot(*(c - (x, y))) > radius + r + 2 for x, y, r in taken):
            taken.append((float(c[0]), float(c[1]), radius))
            return c
    return None


def _uncompressed_rle(mask: np.ndarray) -> Dict:
    """COCO's uncompressed RLE of a boolean mask: column-major run lengths,
    starting with a run of zeros (possibly empty)."""
    flat = mask.ravel(order='F').astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    return dict(counts=counts, size=[int(mask.shape[0]), int(mask.shape[1])])


def _polygon_annotation(poly: np.ndarray, h: int, w: int, rle: bool) -> Dict:
    """segmentation, area and bbox of one object: its polygon, or the
    compressed RLE of the polygon's mask."""
    flat = [round(float(v), 2) for v in poly.reshape(-1)]
    encoded = mask_utils.merge(mask_utils.frPyObjects([flat], h, w))
    area = float(mask_utils.area(encoded))
    if rle:
        seg = dict(size=[h, w], counts=encoded['counts'].decode('ascii'))
        bbox = [float(v) for v in mask_utils.toBbox(encoded)]
    else:
        seg = [flat]
        xs, ys = flat[0::2], flat[1::2]
        bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
    return dict(segmentation=seg, area=area, bbox=bbox)


def _layout(seed: int, split: str, index: int,
            empty: bool) -> Tuple[Dict, List[Dict], List[Tuple[int, np.ndarray]]]:
    """One entry: its image record, its annotations (without ids) and the
    shapes to draw, as (category index, polygon)."""
    rng = np.random.default_rng([seed, SPLITS[split], index, 0])
    w, h = COCO_IMAGE_SIZES[int(rng.integers(len(COCO_IMAGE_SIZES)))]
    img_id = _image_id(seed, split, index)
    image = dict(
        license=1,
        file_name=f'{img_id:012d}.jpg',
        coco_url='',
        height=h,
        width=w,
        date_captured='2017-01-01 00:00:00',
        flickr_url='',
        id=img_id)
    anns: List[Dict] = []
    shapes: List[Tuple[int, np.ndarray]] = []
    if empty:
        return image, anns, shapes
    taken: List[Tuple[float, float, float]] = []
    side = min(w, h)
    if index % 4 == _CROWD:
        # a crowd: many small same-category shapes in one region, one annotation
        cat = int(rng.integers(len(COCO_CATEGORIES)))
        radius = rng.uniform(0.12, 0.2) * side
        center = _place(rng, w, h, radius, taken, tries=100)
        mask = np.zeros((h, w), np.uint8)
        members: List[Tuple[float, float, float]] = []
        for _ in range(int(rng.integers(6, 13))):
            r = rng.uniform(4, 9)
            offset = rng.uniform(-1, 1, size=2) * (radius - r)
            c = center + offset
            if any(np.hypot(*(c - (x, y))) < r + q for x, y, q in members):
                continue
            members.append((float(c[0]), float(c[1]), r))
            poly = _shape_polygon(rng, SHAPES_CLASSES[cat % 4], c, 2 * r)
            cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
            shapes.append((cat, poly))
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append(
            dict(
                segmentation=_uncompressed_rle(mask.astype(bool)),
                area=float(mask_utils.area(rle)),
                bbox=[float(v) for v in mask_utils.toBbox(rle)],
                iscrowd=1,
                category_id=COCO_CATEGORY_IDS[cat]))
    lo, hi = np.log(16), np.log(0.45 * side)
    for k in range(int(rng.integers(1, 9))):
        cat = int(rng.integers(len(COCO_CATEGORIES)))
        diameter = float(np.exp(rng.uniform(lo, hi)))
        center = _place(rng, w, h, diameter / 2, taken)
        while center is None and k == 0:  # every non-empty entry has an object
            diameter = max(16.0, diameter / 2)
            center = _place(rng, w, h, diameter / 2, taken)
        if center is None:
            continue
        poly = _shape_polygon(rng, SHAPES_CLASSES[cat % 4], center, diameter)
        as_rle = (k == 0 and index % 4 == _RLE_FIRST) or rng.random() < 0.2
        ann = _polygon_annotation(poly, h, w, as_rle)
        ann.update(iscrowd=0, category_id=COCO_CATEGORY_IDS[cat])
        anns.append(ann)
        shapes.append((cat, poly))
    return image, anns, shapes


def _render(seed: int, split: str, index: int, w: int, h: int,
            shapes: Sequence[Tuple[int, np.ndarray]]) -> np.ndarray:
    """The pixels (H, W, 3) uint8 BGR of one entry: the benchmark's smooth
    background and clutter, each shape filled with its category's texture."""
    rng = np.random.default_rng([seed, SPLITS[split], index, 1])
    img = _background(rng, h, w)
    _draw_clutter(rng, img, (2, 6))
    for cat, poly in shapes:
        pts = np.round(poly).astype(np.int32)
        x0, y0 = np.clip(pts.min(0), 0, None)
        x1, y1 = np.minimum(pts.max(0) + 1, (w, h))
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [pts - (x0, y0)], 1)
        tex = _texture(rng, y1 - y0, x1 - x0, cat % 4)
        crop = img[y0:y1, x0:x1]
        crop[mask.astype(bool)] = tex[mask.astype(bool)]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _is_fixture(ann_file: str) -> bool:
    """Whether ``ann_file`` was written by this generator (its ``info`` comes
    first; the check reads 4 KB, not a real COCO file's 450 MB)."""
    with open(ann_file, encoding='utf-8', errors='replace') as f:
        return FIXTURE_MARK in f.read(4096)


def _prepare_dir(out_dir: str, split: str) -> str:
    """The split's image folder, emptied of a previous fixture's images;
    refuses to write over anything else (a real COCO)."""
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    img_dir = osp.join(out_dir, split)
    ours = osp.isfile(ann_file) and _is_fixture(ann_file)
    if osp.exists(ann_file) and not ours:
        raise FileExistsError(f'{ann_file} exists and is not a {FIXTURE_MARK}; '
                              'refusing to overwrite it (pick another --out)')
    stale = glob.glob(osp.join(img_dir, '*.jpg'))
    if stale and not ours:
        raise FileExistsError(f'{img_dir} holds images but no fixture annotation '
                              'file; refusing to write into it (pick another --out)')
    for path in stale:
        os.remove(path)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    return ann_file


def generate_coco_split(out_dir: str,
                        split: str,
                        num_listed: int,
                        num_files: int,
                        seed: int = 0) -> str:
    """Write ``split`` ('train2017' or 'val2017'): an annotation file listing
    ``num_listed`` images, of which the first ``num_files`` are written.

    Returns:
        The path of ``annotations/instances_{split}.json``.
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}, valid: {sorted(SPLITS)}')
    if not 1 <= num_files <= num_listed:
        raise ValueError(f'need 1 <= num_files <= num_listed, got {num_files} '
                         f'and {num_listed}')
    ann_file = _prepare_dir(out_dir, split)
    images, annotations = [], []
    num_crowd = 0
    for index in range(num_listed):
        written = index < num_files
        # val: every fourth is empty; train: only listed-only entries are, so
        # mmdet's filter keeps the written ones at the front (see the header)
        empty = index % 4 == _EMPTY and (split == 'val2017' or not written)
        image, anns, shapes = _layout(seed, split, index, empty)
        images.append(image)
        for ann in anns:
            if ann['iscrowd']:
                num_crowd += 1
                ann_id = _CROWD_ID_BASE + num_crowd
            else:
                ann_id = len(annotations) - num_crowd + 1
            annotations.append(dict(ann, image_id=image['id'], id=ann_id))
        if written:
            img = _render(seed, split, index, image['width'], image['height'], shapes)
            cv2.imwrite(
                osp.join(out_dir, split, image['file_name']), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    coco = dict(
        info=dict(
            description=f'{FIXTURE_MARK} (synthetic, not COCO images)',
            url='',
            version='1.0',
            year=2017,
            contributor='mixaq_mmdet',
            date_created='2017/09/01',
            seed=seed,
            split=split,
            num_files=num_files),
        licenses=[dict(url='', id=1, name='synthetic test data')],
        images=images,
        annotations=annotations,
        categories=[dict(supercategory=s, id=i, name=n) for i, n, s in COCO_CATEGORIES])
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def generate_coco_fixture(out_dir: str,
                          num_train_listed: int = 2000,
                          num_train_files: int = 8,
                          num_val: int = 4,
                          seed: int = 0) -> Dict[str, str]:
    """Write the COCO-layout fixture under ``out_dir`` (e.g. ``data/coco``):
    train2017 lists ``num_train_listed`` images and has the first
    ``num_train_files`` written; val2017 has ``num_val``, all written.

    Returns:
        A mapping from split name to its annotation file.
    """
    return {
        'train2017': generate_coco_split(out_dir, 'train2017', num_train_listed, num_train_files,
                                         seed),
        'val2017': generate_coco_split(out_dir, 'val2017', num_val, num_val, seed)
    }
