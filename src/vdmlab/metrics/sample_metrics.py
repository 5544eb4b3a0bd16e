"""Sample metrics beyond FID, from the same features as FID: KID, improved precision/recall, class histogram.

- KID (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb/d + 1)³.
  Both feature sets are split into disjoint random blocks; KID is the mean of the per-block unbiased
  estimates and its standard error is their spread / √blocks (independent blocks, an honest s.e.).
- Improved precision and recall (Kynkäänniemi et al. 2019): each point's k-NN radius within its own set
  (k = 3) defines a ball; precision is the fraction of generated points inside some real ball, recall the
  fraction of real points inside some generated ball. Distances are computed a block of rows at a time.

Both need the features themselves (FID needs only their sums): at 50,000 samples they run on a uniform random
subset of at most ``fid.metrics_subset`` real and generated features (:class:`RecordingExtractor`'s reservoir),
so that memory and the O(N²) distances stay bounded whatever N is.
- On the digits, the shipped classifier's class histogram of the samples (mode coverage: a missing digit
  shows as a zero count). The classifier's head acts on the FID features (its penultimate layer).

:class:`RecordingExtractor` wraps an FID extractor so that the features FIDMetric computes are kept (no
second pass over the samples).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RecordingExtractor(nn.Module):
    """An FID feature extractor that also keeps the feature rows it returns (``take()`` hands them over).

    ``limit`` (``fid.metrics_subset``) bounds what is kept: at most ``limit`` rows, a uniform random subset of all
    the rows seen since the last ``take()`` (reservoir sampling, Vitter's algorithm R, seeded by ``seed``), so that
    KID and precision/recall of 50,000 samples hold ``limit`` features and not 50,000. None keeps every row.
    """

    def __init__(self, extractor: nn.Module, limit: int | None = None, seed: int = 0):
        super().__init__()
        if limit is not None and int(limit) < 2:
            raise ValueError(f"fid.metrics_subset={limit}: keep at least 2 features (or null to keep all)")
        self.extractor = extractor
        self.num_features = extractor.num_features
        self.limit = None if limit is None else int(limit)
        self.seed = int(seed)
        self._reset()

    def _reset(self) -> None:
        self.recorded: list[Tensor] = []
        self.kept: Tensor | None = None  # the reservoir once ``limit`` rows have been seen
        self.seen = 0
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def classifier(self) -> nn.Module | None:
        """The wrapped extractor's classifier (the digits features), for the class accuracy of samples."""
        return getattr(self.extractor, "classifier", None)

    def train(self, mode: bool = True) -> RecordingExtractor:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        features = self.extractor(x)
        self.record(features.detach().double().cpu())
        return features

    def record(self, rows: Tensor) -> None:
        """Keep ``rows`` ``[n, F]``: all of them, or their share of the reservoir of ``limit`` rows."""
        if self.limit is None:
            self.recorded.append(rows)
            self.seen += rows.shape[0]
            return
        if self.kept is None:
            free = self.limit - self.seen
            self.recorded.append(rows[:free])
            self.seen += min(free, rows.shape[0])
            rows = rows[free:]
            if self.seen < self.limit:
                return
            self.kept, self.recorded = torch.cat(self.recorded), []
        if rows.shape[0] == 0:
            return
        # row j (0-based over all rows seen) replaces slot r ~ U{0..j} when r < limit (algorithm R)
        position = self.seen + torch.arange(rows.shape[0], dtype=torch.float64)
        slot = (torch.rand(rows.shape[0], generator=self.generator, dtype=torch.float64) * (position + 1)).long()
        for i in torch.nonzero(slot < self.limit).flatten().tolist():  # in order: a later row wins a shared slot
            self.kept[slot[i]] = rows[i]
        self.seen += rows.shape[0]

    def take(self) -> Tensor:
        """The features kept since the last ``take()``, ``[min(N, limit), F]`` float64, and forget them."""
        if self.kept is not None:
            features = self.kept
        else:
            features = torch.cat(self.recorded) if self.recorded else torch.empty(0, self.num_features, dtype=torch.float64)
        self._reset()
        return features


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k(a, b) = (aᵀb/d + 1)³, the KID kernel, for rows of a ``[n, d]`` and b ``[m, d]``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(real: Tensor, fake: Tensor) -> Tensor:
    """Unbiased MMD² = mean_{i≠j} k(r_i, r_j) + mean_{i≠j} k(f_i, f_j) - 2 mean_{i,j} k(r_i, f_j)."""
    n, m = real.shape[0], fake.shape[0]
    k_rr, k_ff, k_rf = polynomial_kernel(real, real), polynomial_kernel(fake, fake), polynomial_kernel(real, fake)
    return ((k_rr.sum() - k_rr.diagonal().sum()) / (n * (n - 1)) + (k_ff.sum() - k_ff.diagonal().sum()) / (m * (m - 1))
            - 2.0 * k_rf.mean())


def kid(real: Tensor, fake: Tensor, num_blocks: int = 10, seed: int = 0) -> dict[str, float]:
    """``{"kid", "kid_se"}``: mean and standard error of the unbiased MMD² over disjoint random blocks."""
    num_blocks = int(num_blocks)
    size_r, size_f = real.shape[0] // num_blocks, fake.shape[0] // num_blocks
    if num_blocks < 2 or min(size_r, size_f) < 2:
        raise ValueError(f"KID needs >= 2 blocks of >= 2 features each: got {real.shape[0]} real and {fake.shape[0]} "
                         f"generated for {num_blocks} blocks; lower kid.num_blocks or raise fid.num_samples")
    g = torch.Generator().manual_seed(seed)
    perm_r, perm_f = torch.randperm(real.shape[0], generator=g), torch.randperm(fake.shape[0], generator=g)
    real, fake = real.double(), fake.double()
    values = torch.stack([mmd2_unbiased(real[perm_r[b * size_r:(b + 1) * size_r]], fake[perm_f[b * size_f:(b + 1) * size_f]])
                          for b in range(num_blocks)])
    return {"kid": float(values.mean()), "kid_se": float(values.std() / num_blocks**0.5)}


#: rows of a distance matrix computed at once: memory ``CHUNK_ROWS × n`` instead of ``n × n``
CHUNK_ROWS = 1024


def knn_radii(features: Tensor, k: int, chunk: int = CHUNK_ROWS) -> Tensor:
    """Distance from each row to its k-th nearest other row, ``[n]`` (distances ``chunk`` rows at a time)."""
    # the 1st smallest is the point itself (distance 0)
    return torch.cat([torch.cdist(part, features).kthvalue(k + 1, dim=1).values for part in features.split(chunk)])


def coverage_fraction(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = CHUNK_ROWS) -> float:
    """Fraction of ``points`` inside at least one ball (centre_j, radius_j) (distances ``chunk`` points at a time)."""
    inside = sum(int((torch.cdist(part, centres) <= radii[None, :]).any(1).sum()) for part in points.split(chunk))
    return inside / points.shape[0]


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall with k-NN balls (Kynkäänniemi et al. 2019): ``{"precision", "recall"}``."""
    real, fake = real.double(), fake.double()
    return {"precision": coverage_fraction(fake, real, knn_radii(real, k)),
            "recall": coverage_fraction(real, fake, knn_radii(fake, k))}


def class_histogram(logits: Tensor, num_classes: int) -> dict[str, float]:
    """Counts of the argmax classes ``{"class_0": n_0, …}`` and how flat they are (:func:`class_counts`)."""
    return class_counts(logits.argmax(1), num_classes)


def class_counts(classes: Tensor, num_classes: int, prefix: str = "class") -> dict[str, float]:
    """Counts of integer ``classes`` as ``{f"{prefix}_0": n_0, …}`` and how flat they are: ``{prefix}es_missing``
    (classes never seen), ``{prefix}_max_min`` (largest count over smallest; inf when a class is missing) and
    ``{prefix}_chi2_p`` (p-value of Pearson's χ² test of a uniform class distribution, C − 1 degrees of freedom)."""
    from scipy.stats import chi2

    counts = torch.bincount(classes.long().flatten().cpu(), minlength=num_classes).double()
    result = {f"{prefix}_{c}": int(n) for c, n in enumerate(counts.tolist())}
    result[f"{prefix}es_missing"] = int((counts == 0).sum())
    result[f"{prefix}_max_min"] = float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")
    expected = counts.sum() / num_classes
    result[f"{prefix}_chi2_p"] = float(chi2.sf(float(((counts - expected) ** 2 / expected).sum()), num_classes - 1))
    return result


def nearest_neighbour_classes(fake: Tensor, real: Tensor, real_labels: Tensor, chunk: int = 1024) -> Tensor:
    """The label of each fake sample's nearest real image (Euclidean distance of the flattened pixels): a class
    read without any classifier, to tell a model's class imbalance from a classifier's bias on samples."""
    real_flat = real.flatten(1).double()
    nearest = [torch.cdist(part.flatten(1).double().to(real_flat.device), real_flat).argmin(1)
               for part in fake.split(chunk)]
    return real_labels.to(real_flat.device)[torch.cat(nearest)]


def sample_metrics(real: Tensor, fake: Tensor, extractor: nn.Module, k: int = 3, kid_blocks: int = 10,
                   seed: int = 0) -> dict[str, float]:
    """KID (with s.e.), precision/recall and, for the digits classifier's features, the class histogram of ``fake``
    (and its flatness statistics for ``real`` as ``class_max_min_real``, ``class_chi2_p_real``: the reference)."""
    result = {**kid(real, fake, kid_blocks, seed), **precision_recall(real, fake, k)}
    classifier = getattr(extractor, "classifier", None)
    if classifier is not None and hasattr(classifier, "head"):
        head = classifier.head
        with torch.no_grad():
            logits_fake, logits_real = (head(f.to(dtype=head.weight.dtype, device=head.weight.device))
                                        for f in (fake, real))
        result.update(class_histogram(logits_fake, head.out_features))
        reference = class_histogram(logits_real, head.out_features)
        result.update({f"{key}_real": reference[key] for key in ("class_max_min", "class_chi2_p")})
    return result
