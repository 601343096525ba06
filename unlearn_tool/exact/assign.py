"""Which sample trains which part: samples -> (shard, slice) by a seeded rule, and the slice orders of each shard.

Assignment rules (the manifest records which one): a permutation of the train indices drawn from numpy's PCG64
seeded with the run's seed; the sample at position j of the permutation goes to shard j mod S. Within its shard:
  uniform    (ASSIGNMENT_RULE): slice (j // S) mod R;
  by_weight  (WEIGHTED_ASSIGNMENT_RULE): the shard's samples sorted by increasing deletion probability (ties: their
             permutation position) fill slice 0, then 1, ...; so the likeliest deleted samples share the last slices.
Either way shards and slices differ in size by at most one sample, and slice s of a shard has the same size.

Slice orders (S3T's "sequences"): cyclic rotation (sequence b is slices b, b+1, ..., wrapping) or BMS: for each
position, a minimum-cost bipartite matching of sequences to the slices they have not used yet, where a
slice's cost is the log of its expected number of deletions, the hazard sum over its samples of -log(1 - w)
(= -log(1 - p), p its probability of being hit; so the least likely deleted slices come first). The hazard is
summed per sample and never turned into p and back, so slices do not saturate: 30 and 60 expected deletions stay
ordered. A sample's w is capped at 1 - CERTAIN (a w = 1 sample counts CERTAIN_HAZARD ~ 27.6 expected deletions,
as many as any w >= 1 - 1e-12 sample). Sharing a position with another sequence costs as much as a slice with
FIRST_SHARE_RATIO (first position: a deletion there cuts every sharing sequence to nothing) or SHARE_RATIO
(later) times the expected deletions, so
sequences stay diverse among slices of alike probability (distinct first slices, a Latin square under uniform
weights) but every sequence ends with the slices far likelier to be deleted, and none opens with one. This is
our reading of "bipartite matching over deletion probabilities" (docs/exact.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import MethodError

ASSIGNMENT_RULE = "pcg64(seed).permutation(N); position j -> shard j % S, slice (j // S) % R"
WEIGHTED_ASSIGNMENT_RULE = ("pcg64(seed).permutation(N); position j -> shard j % S; within a shard, samples sorted by "
                            "(deletion weight, j) fill slices 0..R-1 in turn, slice s holding ceil/floor(size/R) as with the uniform rule")
# Sharing a position with other sequences costs as much as taking a slice with this many times the expected deletions:
# at the first position (a deletion there cuts every sharing sequence to nothing), and at later positions.
FIRST_SHARE_RATIO = 4.0
SHARE_RATIO = 1.5
UNASSIGNED = -1
# A deletion weight of 1 (certain) would be an infinite hazard: each sample's w is capped at 1 - CERTAIN, so it
# counts at most CERTAIN_HAZARD ~ -log(CERTAIN) = 27.6 expected deletions; a slice's hazard is the uncapped sum.
CERTAIN = 1e-12
CERTAIN_HAZARD = float(-np.log1p(-(1.0 - CERTAIN)))  # ~27.63


def assign(n: int, shards: int, slices: int, seed: int, weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(shard, slice) per train sample, int64 arrays of length n; with `weights`, the by_weight rule within shards."""
    if n < shards * slices:
        raise MethodError(f"--param shards/slices: {shards} shards x {slices} slices need at least {shards * slices} "
                          f"training samples, the train split has {n}; use fewer shards or slices")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    shard = np.empty(n, dtype=np.int64)
    slc = np.empty(n, dtype=np.int64)
    pos = np.arange(n)
    shard[perm] = pos % shards
    slc[perm] = (pos // shards) % slices
    if weights is not None:
        for k in range(shards):
            members = perm[k::shards]  # the shard's samples in permutation order (position j = k + shards * t)
            ranked = members[np.argsort(weights[members], kind="stable")]  # increasing weight; ties keep permutation order
            slc[ranked] = _slice_of_rank(len(ranked), slices)
    return shard, slc


def _slice_of_rank(size: int, slices: int) -> np.ndarray:
    """Contiguous slices of sizes ceil/floor(size / slices), the larger ones first (as the uniform rule sizes them)."""
    q, r = divmod(size, slices)
    return np.repeat(np.arange(slices, dtype=np.int64), [q + 1 if s < r else q for s in range(slices)])


def digest(shard: np.ndarray, slc: np.ndarray) -> str:
    """sha256 of the assignment itself (little-endian int64 shard array, then slice array)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(shard, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(slc, dtype="<i8").tobytes())
    return h.hexdigest()


def cyclic_orders(slices: int, sequences: int) -> list[list[int]]:
    return [[(b + j) % slices for j in range(slices)] for b in range(sequences)]


def bms_orders(slice_hazards: Sequence[float], sequences: int) -> list[list[int]]:
    """Per position, a minimum-cost matching of sequences to unused slices: cost log(h), h the slice's expected
    deletions (`slice_hazards`; scale-free: twice the expected deletions costs log 2 more), plus, for a slice
    another sequence already takes at this position, log(FIRST_SHARE_RATIO) at the first position and
    log(SHARE_RATIO) later (flat, with a tiny per-copy term that spreads unavoidable sharing evenly)."""
    from scipy.optimize import linear_sum_assignment

    hazard = np.asarray(slice_hazards, dtype=np.float64)
    if np.any(~np.isfinite(hazard)) or np.any(hazard < 0):
        raise ValueError("bms_orders: slice hazards must be finite and >= 0")
    r = len(hazard)
    logp = np.log(np.clip(hazard, 1e-300, None))
    orders: list[list[int]] = [[] for _ in range(sequences)]
    used = 1e9  # a slice once per sequence
    for position in range(r):
        share = float(np.log(FIRST_SHARE_RATIO if position == 0 else SHARE_RATIO))
        # columns: copy c of slice s (c = how many other sequences already take s at this position)
        cost = np.empty((sequences, r * sequences))
        for c in range(sequences):
            cost[:, c::sequences] = logp[None, :] + (share + 1e-6 * c if c else 0.0)
        for b, seq in enumerate(orders):
            for s in seq:
                cost[b, s * sequences:(s + 1) * sequences] = used
        rows, cols = linear_sum_assignment(cost)
        for b, col in zip(rows, cols):
            orders[b].append(int(col) // sequences)
    return orders


def sample_hazards(weights: np.ndarray) -> np.ndarray:
    """-log(1 - w) per sample (its expected deletions as a hazard; ~w for small w), w capped at 1 - CERTAIN."""
    return -np.log1p(-np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0 - CERTAIN))


def slice_hazards(weights: np.ndarray, shard: np.ndarray, slc: np.ndarray, k: int, slices: int) -> list[float]:
    """Expected deletions of each slice s of shard k: sum of -log(1 - w) over its samples (= -log P(no deletion hits
    it)); summed directly, so it does not saturate as 1 - prod(1 - w) does near 1."""
    h = sample_hazards(weights)
    return [_as_before(float(np.sum(h[(shard == k) & (slc == s)]))) for s in range(slices)]


def _as_before(hazard: float) -> float:
    """`hazard` rounded as the earlier round trip -log(1 - p), p = 1 - exp(-hazard), rounded it, wherever that trip
    did not saturate (p < 1 - CERTAIN); beyond, the hazard itself. linear_sum_assignment has many equal-cost optima
    (sequences are interchangeable at a position) and picks among them by the costs' last bits, so this keeps the
    orders of artifacts trained before this change bit for bit (and their --exclude-forget retrains reproducible)."""
    p = -np.expm1(-hazard)
    return float(-np.log1p(-p)) if p < 1.0 - CERTAIN else hazard


def read_weights(path: str | Path, n: int) -> np.ndarray:
    """One deletion probability in [0, 1] per train sample, one per line (# comments and blank lines allowed)."""
    from ..request import read_regular_file

    p = Path(path)
    raw = read_regular_file(p, "--param deletion_weights file", "give a text file with one probability per train sample", 64 << 20)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MethodError(f"--param deletion_weights: {p} is not UTF-8 text; give one number per line") from None
    values = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            v = float(line)
        except ValueError:
            raise MethodError(f"--param deletion_weights: line {i} of {p} is not a number; give one probability per line") from None
        if not 0.0 <= v <= 1.0:
            raise MethodError(f"--param deletion_weights: line {i} of {p} holds {v!r}, not a probability in [0, 1]")
        values.append(v)
    if len(values) != n:
        raise MethodError(f"--param deletion_weights: {p} holds {len(values)} probabilities, the train split has {n} samples; give one per sample")
    return np.asarray(values, dtype=np.float64)


def shard_orders(order: str, slices: int, sequences: int, weights: Optional[np.ndarray], shard: np.ndarray, slc: np.ndarray, shards: int) -> list[list[list[int]]]:
    """The slice orders of every shard: [shard][sequence] -> list of slice ids."""
    if order == "cyclic":
        return [cyclic_orders(slices, sequences) for _ in range(shards)]
    w = weights if weights is not None else np.full(len(shard), 1.0 / max(1, len(shard)))
    return [bms_orders(slice_hazards(w, shard, slc, k, slices), sequences) for k in range(shards)]
