"""Training order that gives every group of people the same share of an epoch (`--balance-groups`).

A detector trained on reals where one age, gender or skin tone is rare learns less of what real faces of that
group look like, and calls more of them fake. `GroupBalancedSampler` draws each epoch with replacement so that
every group (the joint values of the chosen manifest columns, ages binned as in `realface.eval.groups`) has the
same total weight; faces whose records carry none of the columns (e.g. DFDC) keep their natural share. The
decision rule stays the same for everyone: only what the model sees while it learns changes.

A rare group's faces are drawn more often, not copied: each draw is augmented anew. One face weighs at most
`MAX_WEIGHT` (5) times an unbalanced draw, so that a tiny cell (say, Indian women over 60) is not repeated dozens
of times an epoch; its share then stays below the others'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Sequence

import numpy as np

from realface.errors import RealfaceError
from realface.eval.groups import Grouping

MAX_WEIGHT = 5.0  # one face is drawn at most this many times as often as the average face


def group_keys(extras: Sequence[dict[str, str]], grouping: Grouping) -> list[tuple[str, ...] | None]:
    """The group of each record (its `extra` columns): a tuple of group names, or None for a record that has none
    of the grouping's columns (not part of the balancing)."""
    if not grouping.columns:
        raise RealfaceError("balancing needs group columns, e.g. race gender age")
    keys: list[tuple[str, ...] | None] = []
    for extra in extras:
        if not any(c in extra for c in grouping.columns):
            keys.append(None)
        else:
            keys.append(tuple(grouping.group_of(c, extra.get(c, "")) for c in grouping.columns))
    if all(k is None for k in keys):
        raise RealfaceError(f"no training face has the group columns {', '.join(grouping.columns)}")
    return keys


def balanced_weights(keys: Sequence[Hashable | None], max_weight: float = MAX_WEIGHT) -> np.ndarray:
    """Sampling weight of each face. The grouped faces keep their total (one per face) and share it equally among
    their groups, except that no face weighs more than `max_weight`: the smallest groups are capped there and the
    rest share what is left (water-filling). Faces with key None weigh 1. A group with an unknown value
    (`realface.eval.groups.UNKNOWN` in its key) is one more group."""
    if max_weight < 1:
        raise RealfaceError(f"max_weight must be at least 1, got {max_weight}")
    counts = Counter(k for k in keys if k is not None)
    left, groups_left = float(sum(counts.values())), len(counts)
    per_face: dict[Hashable, float] = {}
    for key, count in sorted(counts.items(), key=lambda kc: kc[1]):  # smallest groups first
        per_face[key] = min(max_weight, left / groups_left / count)
        left -= per_face[key] * count
        groups_left -= 1
    return np.array([1.0 if k is None else per_face[k] for k in keys], dtype=np.float64)


class GroupBalancedSampler:
    """This process's indices for an epoch: `len(keys)` draws with replacement by `balanced_weights`, dealt
    round-robin to the processes; deterministic in (seed, epoch), like everything else in an epoch."""

    def __init__(
        self, keys: Sequence[Hashable | None], seed: int = 0, num_replicas: int = 1, rank: int = 0,
        max_weight: float = MAX_WEIGHT,
    ) -> None:  # fmt: skip
        self.probs = balanced_weights(keys, max_weight)
        self.probs /= self.probs.sum()
        self.keys = list(keys)
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.length = len(self.keys) // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = rng.choice(len(self.keys), size=self.length * self.num_replicas, p=self.probs)
        return iter(int(i) for i in draws[self.rank :: self.num_replicas])

    def shares(self) -> dict[Hashable, float]:
        """Expected share of the epoch per group (None: the faces outside the balancing), for the run's log."""
        out: dict[Hashable, float] = {}
        for k, p in zip(self.keys, self.probs):
            out[k] = out.get(k, 0.0) + float(p)
        return out


def balance_record(grouping: Grouping, sampler: GroupBalancedSampler) -> dict:
    """What a run's config.json records of its balancing: the columns, the age bins and each group's expected
    share with a readable key ("White / female / 20-39"; "ungrouped" for the rest), rounded."""
    shares = sorted(sampler.shares().items(), key=lambda kv: (kv[0] is None, str(kv[0])))
    return {
        "columns": list(grouping.columns),
        "age_bins": list(grouping.age_bins),
        "shares": {("ungrouped" if k is None else " / ".join(k)): round(v, 4) for k, v in shares},
    }
