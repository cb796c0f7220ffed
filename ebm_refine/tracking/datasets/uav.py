"""UAV123, UAV20L and UAV123@10fps (Mueller, Smith, Ghanem: "A Benchmark and Simulator for UAV Tracking",
ECCV 2016).

Layout of the release (``root`` is the folder holding ``data_seq`` and ``anno``)::

    data_seq/UAV123/<folder>/%06d.jpg          all frames of a recording
    anno/UAV123/<seq>.txt                      x,y,w,h per frame of sub-sequence <seq>; NaN,NaN,NaN,NaN
                                               where the target is out of view
    anno/UAV20L/<folder>.txt                   UAV20L: the 20 long recordings, every frame
    data_seq/UAV123_10fps/<folder>/%06d.jpg    UAV123@10fps: every third frame, renumbered 1, 2, ...
    anno/UAV123_10fps/<seq>.txt

Several UAV123 sequences are pieces of one recording (``bird1_2`` is frames 775-1477 of ``bird1``), so the
frames of a sequence come from the official start/end table below (the benchmark's ``configSeqs``). The
10 fps table follows from it: 30 fps frame ``f`` is 10 fps frame ``(f - 1) // 3 + 1``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence as _Seq, Tuple

from ...utils import BadValueError, MissingFileError, UnknownNameError
from .io import check_box_sizes, check_rows, expected_frames, read_box_file
from .sequence import Sequence

# name, folder, first frame, last frame (inclusive, 1-based) -- the official UAV123 configuration.
_UAV123_TABLE = """
bike1 bike1 1 3085
bike2 bike2 1 553
bike3 bike3 1 433
bird1_1 bird1 1 253
bird1_2 bird1 775 1477
bird1_3 bird1 1573 2437
boat1 boat1 1 901
boat2 boat2 1 799
boat3 boat3 1 901
boat4 boat4 1 553
boat5 boat5 1 505
boat6 boat6 1 805
boat7 boat7 1 535
boat8 boat8 1 685
boat9 boat9 1 1399
building1 building1 1 469
building2 building2 1 577
building3 building3 1 829
building4 building4 1 787
building5 building5 1 481
car1_1 car1 1 751
car1_2 car1 751 1627
car1_3 car1 1627 2629
car10 car10 1 1405
car11 car11 1 337
car12 car12 1 499
car13 car13 1 415
car14 car14 1 1327
car15 car15 1 469
car16_1 car16 1 415
car16_2 car16 415 1993
car17 car17 1 1057
car18 car18 1 1207
car1_s car1_s 1 1475
car2 car2 1 1321
car2_s car2_s 1 320
car3 car3 1 1717
car3_s car3_s 1 1300
car4 car4 1 1345
car4_s car4_s 1 830
car5 car5 1 745
car6_1 car6 1 487
car6_2 car6 487 1807
car6_3 car6 1807 2953
car6_4 car6 2953 3925
car6_5 car6 3925 4861
car7 car7 1 1033
car8_1 car8 1 1357
car8_2 car8 1357 2575
car9 car9 1 1879
group1_1 group1 1 1333
group1_2 group1 1333 2515
group1_3 group1 2515 3925
group1_4 group1 3925 4873
group2_1 group2 1 907
group2_2 group2 907 1771
group2_3 group2 1771 2683
group3_1 group3 1 1567
group3_2 group3 1567 2827
group3_3 group3 2827 4369
group3_4 group3 4369 5527
person1 person1 1 799
person10 person10 1 1021
person11 person11 1 721
person12_1 person12 1 601
person12_2 person12 601 1621
person13 person13 1 883
person14_1 person14 1 847
person14_2 person14 847 1813
person14_3 person14 1813 2923
person15 person15 1 1339
person16 person16 1 1147
person17_1 person17 1 1501
person17_2 person17 1501 2347
person18 person18 1 1393
person19_1 person19 1 1243
person19_2 person19 1243 2791
person19_3 person19 2791 4357
person1_s person1_s 1 1600
person2_1 person2 1 1189
person2_2 person2 1189 2623
person20 person20 1 1783
person21 person21 1 487
person22 person22 1 199
person23 person23 1 397
person2_s person2_s 1 250
person3 person3 1 643
person3_s person3_s 1 505
person4_1 person4 1 1501
person4_2 person4 1501 2743
person5_1 person5 1 877
person5_2 person5 877 2101
person6 person6 1 901
person7_1 person7 1 1249
person7_2 person7 1249 2065
person8_1 person8 1 1075
person8_2 person8 1075 1525
person9 person9 1 661
truck1 truck1 1 463
truck2 truck2 1 385
truck3 truck3 1 535
truck4_1 truck4 1 577
truck4_2 truck4 577 1261
uav1_1 uav1 1 1555
uav1_2 uav1 1555 2377
uav1_3 uav1 2473 3469
uav2 uav2 1 133
uav3 uav3 1 265
uav4 uav4 1 157
uav5 uav5 1 139
uav6 uav6 1 109
uav7 uav7 1 373
uav8 uav8 1 301
wakeboard1 wakeboard1 1 421
wakeboard10 wakeboard10 1 469
wakeboard2 wakeboard2 1 733
wakeboard3 wakeboard3 1 823
wakeboard4 wakeboard4 1 697
wakeboard5 wakeboard5 1 1675
wakeboard6 wakeboard6 1 1165
wakeboard7 wakeboard7 1 199
wakeboard8 wakeboard8 1 1543
wakeboard9 wakeboard9 1 355
"""

#: The 20 long recordings of UAV20L (each is the whole folder).
UAV20L_SEQUENCES = ("bike1", "bird1", "car1", "car3", "car6", "car8", "car9", "car16", "group1", "group2",
                    "group3", "person2", "person4", "person5", "person7", "person14", "person17", "person19",
                    "person20", "uav1")


def _parse_table() -> Dict[str, Tuple[str, int, int]]:
    table = {}
    for line in _UAV123_TABLE.strip().splitlines():
        name, folder, first, last = line.split()
        table[name] = (folder, int(first), int(last))
    return table


#: name -> (folder, first frame, last frame) for the 123 UAV123 sequences at 30 fps.
UAV123_FRAMES: Dict[str, Tuple[str, int, int]] = _parse_table()


def _to_10fps(frame: int) -> int:
    # The 10 fps release keeps 30 fps frames 1, 4, 7, ... and renumbers them 1, 2, 3, ...
    return (frame - 1) // 3 + 1


#: name -> (folder, first frame, last frame) for UAV123@10fps.
UAV123_10FPS_FRAMES: Dict[str, Tuple[str, int, int]] = {
    n: (f, _to_10fps(a), _to_10fps(b)) for n, (f, a, b) in UAV123_FRAMES.items()}

#: name -> (folder, first frame, last frame) for UAV20L: the whole recording.
UAV20L_FRAMES: Dict[str, Tuple[str, int, int]] = {
    folder: (folder, 1, max(b for f, _, b in UAV123_FRAMES.values() if f == folder))
    for folder in UAV20L_SEQUENCES}

_VARIANTS = {
    # dataset key: (table, frame sub-folder, annotation sub-folder)
    "uav123": (UAV123_FRAMES, "data_seq/UAV123", "anno/UAV123"),
    "uav20l": (UAV20L_FRAMES, "data_seq/UAV123", "anno/UAV20L"),
    "uav123_10fps": (UAV123_10FPS_FRAMES, "data_seq/UAV123_10fps", "anno/UAV123_10fps"),
}


def load_uav(root: str, variant: str = "uav123", sequences: Optional[_Seq[str]] = None,
             check_frames: bool = True) -> List[Sequence]:
    """Load UAV123 (``variant="uav123"``), UAV20L (``"uav20l"``) or UAV123@10fps (``"uav123_10fps"``).

    Args:
        root: folder containing ``data_seq/`` and ``anno/``.
        variant: one of ``uav123``, ``uav20l``, ``uav123_10fps``.
        sequences: names to load (default: every sequence of the table whose annotation file exists;
            an explicitly requested sequence must exist).
        check_frames: verify every frame file of the range exists (one directory listing per folder).

    Returns:
        Sequences with ``dataset=variant`` and ``meta = {"folder", "first_frame", "last_frame"}``.

    Raises:
        MissingFileError for a missing frame or annotation file; UnknownNameError for a name that is not
        in the table; AnnotationError (naming file and line) for malformed annotation lines or a row count
        that differs from the table's frame range.
    """
    if variant not in _VARIANTS:
        raise BadValueError(f"unknown UAV variant {variant!r}; choose from {', '.join(sorted(_VARIANTS))}")
    table, frame_dir, anno_dir = _VARIANTS[variant]
    if not os.path.isdir(os.path.join(root, anno_dir)):
        raise MissingFileError(f"{os.path.join(root, anno_dir)}: {variant} annotation folder not found; --root must "
                               "be the folder holding data_seq/ and anno/")
    if sequences is None:
        names = [n for n in table if os.path.isfile(os.path.join(root, anno_dir, f"{n}.txt"))]
        if not names:
            raise MissingFileError(f"{os.path.join(root, anno_dir)}: no annotation file of a known {variant} "
                                   "sequence (<name>.txt); check --root and --dataset")
    else:
        unknown = [n for n in sequences if n not in table]
        if unknown:
            raise UnknownNameError(f"{variant}: unknown sequence(s) {', '.join(unknown)}; names are those of the "
                                   f"official table, e.g. {', '.join(list(table)[:3])}")
        names = list(sequences)
    out = []
    for name in names:
        folder, first, last = table[name]
        anno_path = os.path.join(root, anno_dir, f"{name}.txt")
        boxes = check_box_sizes(anno_path, read_box_file(anno_path, allow_nan=True))
        frames = expected_frames(os.path.join(root, frame_dir, folder), first, last, digits=6, check=check_frames)
        check_rows(anno_path, boxes, len(frames))
        out.append(Sequence(name=name, frames=frames, ground_truth=boxes, dataset=variant,
                            meta={"folder": folder, "first_frame": first, "last_frame": last,
                                  "anno_path": anno_path}))
    return out
