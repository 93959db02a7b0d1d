"""Check that a dataset config's annotation file and image folder exist before
mmdet reads them, so that a ``data_root`` without the expected layout is an
error naming the missing path and the layout, not a traceback from deep inside
pycocotools or the first image load."""
import os.path as osp
from typing import Iterator, List, Mapping, Tuple

#: What a COCO 2017 ``data_root`` holds (https://cocodataset.org/#download).
COCO_LAYOUT = ('annotations/instances_train2017.json', 'annotations/instances_val2017.json',
               'train2017/', 'val2017/')


def _leaf_datasets(dataset: Mapping, where: str) -> Iterator[Tuple[Mapping, str]]:
    """The datasets a config builds, through wrappers (RepeatDataset: ``dataset``;
    ConcatDataset: ``datasets``)."""
    if isinstance(dataset.get('dataset'), Mapping):
        yield from _leaf_datasets(dataset['dataset'], f'{where}.dataset')
    elif isinstance(dataset.get('datasets'), (list, tuple)):
        for index, inner in enumerate(dataset['datasets']):
            yield from _leaf_datasets(inner, f'{where}.datasets.{index}')
    else:
        yield dataset, where


def _join(data_root: str, path: str) -> str:
    return path if osp.isabs(path) else osp.join(data_root, path)


def missing_files(dataset: Mapping, where: str) -> List[Tuple[str, str, str]]:
    """(config key, path, what it is) of each local file a dataset config reads
    that does not exist."""
    missing = []
    for leaf, key in _leaf_datasets(dataset, where):
        data_root = leaf.get('data_root') or ''
        if '://' in data_root:  # a storage backend (s3, petrel): not checked here
            continue
        ann_file = leaf.get('ann_file')
        if ann_file and '://' not in ann_file and not osp.isfile(_join(data_root, ann_file)):
            missing.append((key, _join(data_root, ann_file), 'annotation file'))
        img = (leaf.get('data_prefix') or {}).get('img')
        if img and '://' not in img and not osp.isdir(_join(data_root, img)):
            missing.append((key, _join(data_root, img), 'image folder'))
    return missing


def check_dataset_files(dataset: Mapping, where: str) -> None:
    """Raise FileNotFoundError naming each missing annotation file or image
    folder of the dataset config at ``where`` (e.g. ``test_dataloader.dataset``),
    its ``data_root`` and, for a COCO dataset, COCO's layout."""
    missing = missing_files(dataset, where)
    if not missing:
        return
    key = missing[0][0]
    leaf = next(d for d, k in _leaf_datasets(dataset, where) if k == key)
    lines = ' and '.join(f'{what} {path!r}' for _, path, what in missing)
    verb = 'does not exist' if len(missing) == 1 else 'do not exist'
    message = (f'{key}: {lines} {verb} (data_root={leaf.get("data_root")!r}, '
               f'type={leaf.get("type")!r}).')
    if 'coco' in str(leaf.get('type', '')).lower():
        message += (' A COCO data_root holds ' + ', '.join(COCO_LAYOUT) + '; point '
                    f'{key}.data_root at one (--cfg-options) or link COCO to data/coco')
    raise FileNotFoundError(message)


__all__ = ['COCO_LAYOUT', 'check_dataset_files', 'missing_files']
