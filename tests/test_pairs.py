"""A face's index within its frame reaches training, fakes pair with their own real, and paired batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from realface.data.labelled import PairedSampler, build_items
from realface.faces.manifest import read_face_manifest

LANDMARKS = " ".join(["10 10"] * 68)


def _manifest(tmp_path: Path) -> Path:
    rows = [
        # path, frame, face, label, group: two faces in frame 3 of video g1, their two fakes, a lone real, a lone fake
        ("a.jpg", 3, 0, "real", "g1"),
        ("b.jpg", 3, 1, "real", "g1"),
        ("c.jpg", 3, 1, "fake", "g1"),
        ("d.jpg", 3, 0, "fake", "g1"),
        ("e.jpg", -1, 0, "real", ""),
        ("f.jpg", 5, 0, "fake", "g2"),
    ]
    path = tmp_path / "manifest.csv"
    lines = ["path,source,frame,face,landmarks,label,group"]
    lines += [f"{p},src,{frame},{face},{LANDMARKS},{label},{group}" for p, frame, face, label, group in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_face_index_reaches_records_and_pairs_fakes_with_their_own_face(tmp_path: Path) -> None:
    records = read_face_manifest(_manifest(tmp_path))
    assert [r.face for r in records] == [0, 1, 1, 0, 0, 0]
    assert "face" not in records[0].extra
    items = build_items(records)
    partner = {it.record.path.name: it.partner.path.name for it in items if it.partner is not None}
    assert partner == {"c.jpg": "b.jpg", "d.jpg": "a.jpg"}  # same group, frame and face; f.jpg has no real


def test_paired_sampler_puts_each_fake_next_to_its_real_and_covers_every_item(tmp_path: Path) -> None:
    items = build_items(read_face_manifest(_manifest(tmp_path)))
    names = [it.record.path.name for it in items]
    sampler = PairedSampler(items, seed=0)
    assert sampler.pairs == 2 and len(sampler) == len(items)
    sampler.set_epoch(1)
    order = [names[i] for i in sampler]
    assert sorted(order) == sorted(names)
    for fake, real in (("c.jpg", "b.jpg"), ("d.jpg", "a.jpg")):
        assert order[order.index(fake) + 1] == real
    orders = set()
    for epoch in range(6):  # reshuffled per epoch, the same for the same epoch
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
        assert list(sampler) == list(sampler)
    assert len(orders) > 1
    # two processes: disjoint units, equal lengths
    halves = [list(PairedSampler(items, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(items) // 2
    assert np.intersect1d(halves[0], halves[1]).size == 0
