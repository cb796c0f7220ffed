"""Training layouts the tracker learns from: LaSOT and GOT-10k.

LaSOT (Fan et al., CVPR 2019)::

    <root>/<class>/<class>-<k>/img/%08d.jpg
    <root>/<class>/<class>-<k>/groundtruth.txt      x,y,w,h (comma-separated), one line per frame
    <root>/<class>/<class>-<k>/full_occlusion.txt   one line of comma-separated 0/1 flags
    <root>/<class>/<class>-<k>/out_of_view.txt      idem

The official protocol-II split tests on 4 videos per class (the list below) and trains on the other 1120.
``target_visible`` is ``not full_occlusion and not out_of_view``.

GOT-10k (Huang et al., TPAMI 2019)::

    <root>/<split>/list.txt                          sequence names (split = train, val or test)
    <root>/<split>/<seq>/%08d.jpg
    <root>/<split>/<seq>/groundtruth.txt             x,y,w,h per frame (first frame only in test)
    <root>/<split>/<seq>/absence.label, cover.label  per-frame flags / visible ratio in 0..8
    <root>/<split>/<seq>/meta_info.ini               "key: value" lines (object_class, ...)

``target_visible`` is ``not absent and cover > 0`` (the rule pytracking's training loader uses).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence as _Seq

import numpy as np

from ...utils import BadValueError, MissingFileError
from .io import AnnotationError, check_box_sizes, check_rows, list_frames, read_box_file, read_flag_file
from .sequence import Sequence

# class -> video numbers of the LaSOT test set (protocol II, 280 videos).
_LASOT_TEST = """
airplane 1 9 13 15
basketball 1 6 7 11
bear 2 4 6 17
bicycle 2 7 9 18
bird 2 3 15 17
boat 3 4 12 17
book 3 10 11 19
bottle 1 12 14 18
bus 2 5 17 19
car 2 6 9 17
cat 1 3 18 20
cattle 2 7 12 13
spider 14 16 18 20
coin 3 6 7 18
crab 3 6 12 18
surfboard 12 4 5 8
cup 1 4 7 17
deer 4 8 10 14
dog 1 7 15 19
guitar 3 8 10 16
person 1 5 10 12
pig 2 10 13 18
rubicCube 1 6 14 19
swing 10 14 17 20
drone 13 15 2 7
pool 12 15 3 7
rabbit 10 13 17 19
racing 10 15 16 20
robot 1 19 5 8
sepia 13 16 6 8
sheep 3 5 7 9
skateboard 16 19 3 8
tank 14 16 6 9
tiger 12 18 4 6
train 1 11 20 7
truck 16 3 6 7
turtle 16 5 8 9
umbrella 17 19 2 9
yoyo 15 17 19 7
zebra 10 14 16 17
elephant 1 12 16 18
goldfish 3 7 8 10
hat 1 2 5 18
kite 4 6 10 15
motorcycle 1 3 9 18
mouse 1 8 9 17
flag 3 9 5 2
frog 3 4 20 9
gametarget 1 2 7 13
hand 2 3 9 16
helmet 5 11 19 13
licenseplate 6 12 13 15
electricfan 1 10 18 20
chameleon 3 6 11 20
crocodile 3 4 10 14
gecko 1 5 16 19
fox 2 3 5 20
giraffe 2 10 13 15
gorilla 4 6 9 13
hippo 1 7 9 20
horse 1 4 12 15
kangaroo 2 5 11 14
leopard 1 7 16 20
lion 1 5 12 20
lizard 1 3 6 13
microphone 2 6 14 16
monkey 3 4 9 17
shark 2 3 5 6
squirrel 8 11 13 19
volleyball 1 13 18 19
"""

LASOT_TEST_SEQUENCES = tuple(f"{cls}-{k}" for line in _LASOT_TEST.strip().splitlines()
                             for cls, *ks in [line.split()] for k in ks)


def _check_flags(path: str, flags: np.ndarray, n_frames: int) -> np.ndarray:
    if flags.shape[0] != n_frames:
        raise AnnotationError(f"{path}:1: {flags.shape[0]} flags but {n_frames} frames; the file needs one flag "
                              "per frame")
    return flags


def load_lasot(root: str, split: str = "train", sequences: Optional[_Seq[str]] = None,
               classes: Optional[_Seq[str]] = None) -> List[Sequence]:
    """Load LaSOT sequences.

    Args:
        root: folder holding the class folders (``airplane/``, ``basketball/``, ...).
        split: ``"train"`` (1120 videos), ``"test"`` (the 280 of protocol II) or ``"all"``; only videos
            present under ``root`` are returned.
        sequences: optional explicit names (``"airplane-1"``), overriding ``split``.
        classes: optional subset of classes.

    Returns:
        Sequences with ``dataset="lasot"``, ``object_class`` set and ``target_visible`` from the
        occlusion / out-of-view flags.
    """
    if split not in ("train", "test", "all"):
        raise BadValueError(f"LaSOT split must be train, test or all, got {split!r}")
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: LaSOT root folder not found; check --root")
    test = set(LASOT_TEST_SEQUENCES)
    if sequences is not None:
        names = list(sequences)
    else:
        names = []
        for cls in sorted(os.listdir(root)):
            if classes is not None and cls not in classes:
                continue
            cls_dir = os.path.join(root, cls)
            if not os.path.isdir(cls_dir):
                continue
            vids = [v for v in os.listdir(cls_dir) if os.path.isdir(os.path.join(cls_dir, v))]
            vids.sort(key=lambda v: int(v.rsplit("-", 1)[1]) if v.rsplit("-", 1)[-1].isdigit() else 0)
            names.extend(v for v in vids if split == "all" or (v in test) == (split == "test"))
    out = []
    for name in names:
        cls = name.rsplit("-", 1)[0]
        seq_dir = os.path.join(root, cls, name)
        if not os.path.isdir(seq_dir):
            raise MissingFileError(f"{seq_dir}: LaSOT sequence folder not found; check --sequences (names like "
                                   "airplane-1) and --root")
        anno_path = os.path.join(seq_dir, "groundtruth.txt")
        boxes = check_box_sizes(anno_path, read_box_file(anno_path, allow_nan=True))
        frames = list_frames(os.path.join(seq_dir, "img"), contiguous=True)
        check_rows(anno_path, boxes, len(frames))
        occ_path = os.path.join(seq_dir, "full_occlusion.txt")
        oov_path = os.path.join(seq_dir, "out_of_view.txt")
        visible = None
        if os.path.isfile(occ_path) and os.path.isfile(oov_path):
            occ = _check_flags(occ_path, read_flag_file(occ_path), len(frames))
            oov = _check_flags(oov_path, read_flag_file(oov_path), len(frames))
            visible = ~occ & ~oov
        out.append(Sequence(name=name, frames=frames, ground_truth=boxes, dataset="lasot",
                            target_visible=visible, object_class=cls, meta={"anno_path": anno_path}))
    return out


def _read_meta_info(path: str) -> Dict[str, str]:
    meta: Dict[str, str] = {}
    if not os.path.isfile(path):
        return meta
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if ":" in line:
                key, value = line.split(":", 1)
                meta[key.strip()] = value.strip()
    return meta


def load_got10k(root: str, split: str = "train", sequences: Optional[_Seq[str]] = None) -> List[Sequence]:
    """Load GOT-10k sequences of ``split`` (``train``, ``val`` or ``test``).

    ``root`` is the folder holding ``train/``, ``val/``, ``test/`` (or directly a split folder with a
    ``list.txt``). Test sequences carry only the first-frame box.
    """
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir) and os.path.isfile(os.path.join(root, "list.txt")):
        split_dir = root
    if not os.path.isdir(split_dir):
        raise MissingFileError(f"{split_dir}: GOT-10k split folder not found; check --root and --split")
    list_path = os.path.join(split_dir, "list.txt")
    if sequences is not None:
        names = list(sequences)
    elif os.path.isfile(list_path):
        with open(list_path) as fh:
            names = [ln.strip() for ln in fh if ln.strip()]
    else:
        names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    out = []
    for name in names:
        seq_dir = os.path.join(split_dir, name)
        anno_path = os.path.join(seq_dir, "groundtruth.txt")
        boxes = check_box_sizes(anno_path, read_box_file(anno_path, allow_nan=True))
        frames = list_frames(seq_dir, extensions=(".jpg",), contiguous=True)
        check_rows(anno_path, boxes, len(frames), first_only_ok=True)
        visible = None
        absence_path = os.path.join(seq_dir, "absence.label")
        cover_path = os.path.join(seq_dir, "cover.label")
        if os.path.isfile(absence_path) and os.path.isfile(cover_path):
            absent = _check_flags(absence_path, read_flag_file(absence_path), len(frames))
            cover = _check_flags(cover_path, _read_ints(cover_path), len(frames))
            visible = ~absent & (cover > 0)
        meta = _read_meta_info(os.path.join(seq_dir, "meta_info.ini"))
        out.append(Sequence(name=name, frames=frames, ground_truth=boxes, dataset="got10k",
                            target_visible=visible, object_class=meta.get("object_class"),
                            meta={"split": split, "anno_path": anno_path, **meta}))
    return out


def _read_ints(path: str) -> np.ndarray:
    values = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                values.append(int(float(line.strip())))
            except ValueError:
                raise AnnotationError(f"{path}:{lineno}: non-numeric value {line.strip()!r}; write an "
                                      "integer") from None
    return np.asarray(values, dtype=np.int64)
