"""Small linear-algebra helpers shared by estimators and selectors."""

from __future__ import annotations

from typing import Any


def double_center(matrix: Any) -> Any:
    """H·M·H with H = I − 11ᵀ/n: ``M`` minus its column means and row means, plus its grand mean
    (centres a Gram matrix; −½ of it applied to squared distances is Torgerson's MDS Gram)."""
    return (matrix - matrix.mean(dim=0, keepdim=True)).sub_(matrix.mean(dim=1, keepdim=True)).add_(matrix.mean())
