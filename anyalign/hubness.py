"""Hubness correction of cross-modal scores against a bank of reference queries (never the test queries): inverted
softmax (`"is"`, Smith et al. 2017) and QB-Norm (`"qb-norm"`, Bogolin et al. 2022: only queries whose top-1 item is
in the bank's activation set). Corrected scores are logits: rank with them, do not threshold them as cosines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("none", "is", "qb-norm")


@dataclass(frozen=True)
class Hubness:
    """A hubness correction: `method` (none, is, qb-norm), inverse temperature `beta`, activation-set depth `k`."""

    method: str = "qb-norm"
    beta: float = 20.0
    k: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"hubness method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.beta <= 0 or self.k < 1:
            raise ValueError(f"hubness: beta must be > 0 and k >= 1, got beta={self.beta}, k={self.k}")

    def apply(self, scores: np.ndarray, bank_scores: np.ndarray) -> np.ndarray:
        """`scores` `[Q, N]` corrected with the bank's scores `[B, N]` against the same gallery."""
        return correct_scores(scores, bank_scores, method=self.method, beta=self.beta, k=self.k)


def correct_scores(scores: np.ndarray, bank_scores: np.ndarray, *, method: str = "qb-norm", beta: float = 20.0,
                   k: int = 1) -> np.ndarray:
    """Hubness-corrected `scores` `[Q, N]` given the bank queries' scores `[B, N]` on the same gallery."""
    from scipy.special import logsumexp  # here: `import anyalign.retrieval` stays light

    Hubness(method, beta, k)  # checks the arguments
    s = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return s.astype(np.float32)
    bank = np.asarray(bank_scores, dtype=np.float64)
    if s.ndim != 2 or bank.ndim != 2 or bank.shape[1] != s.shape[1]:
        raise ValueError(f"hubness: scores {s.shape} and bank scores {bank.shape} must be [Q, N] and [B, N] on the "
                         f"same gallery of N items")
    if bank.shape[0] == 0:
        raise ValueError("hubness: the query bank is empty (give reference queries, e.g. training queries)")
    norm = logsumexp(beta * bank, axis=0)  # [N] how strongly the bank is drawn to each item
    corrected = beta * s - np.logaddexp(norm[None, :], beta * s)  # [Q, N] log softmax over bank + this query
    if method == "is":
        return corrected.astype(np.float32)
    kk = min(k, bank.shape[1])
    active = np.zeros(bank.shape[1], dtype=bool)  # items in the top-k of some bank query
    active[np.argpartition(-bank, kk - 1, axis=1)[:, :kk].ravel()] = True
    hit = active[s.argmax(1)]  # [Q] queries whose top-1 item is a possible hub
    return np.where(hit[:, None], corrected, beta * s).astype(np.float32)


def hub_occurrence(scores: np.ndarray, k: int = 1) -> dict[str, float]:
    """How concentrated the top-k answers are: the largest share of queries one item answers (`max_share`), the
    skewness of the k-occurrence distribution (`skewness`, ~0 without hubs) and the share of items never ranked."""
    s = np.asarray(scores)
    kk = min(k, s.shape[1])
    top = np.argpartition(-s, kk - 1, axis=1)[:, :kk].ravel()
    occ = np.bincount(top, minlength=s.shape[1]).astype(np.float64)
    sd = occ.std()
    skew = float(((occ - occ.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0
    return {"max_share": float(occ.max() / s.shape[0]), "skewness": skew, "never_ranked": float((occ == 0).mean())}


__all__ = ["METHODS", "Hubness", "correct_scores", "hub_occurrence"]
