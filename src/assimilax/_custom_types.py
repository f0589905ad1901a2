"""Type aliases shared across the package (one place, as in diffrax)."""

from typing import TYPE_CHECKING

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray


if TYPE_CHECKING:
    # Simple types for static checkers.
    RealScalarLike = float | int | ArrayLike
    BoolMask = Array
else:
    RealScalarLike = float | int | Float[ArrayLike, ""] | Int[ArrayLike, ""]
    BoolMask = Bool[Array, " m"]

StateShape = tuple[int, ...]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "BoolMask",
    "Float",
    "Int",
    "PRNGKeyArray",
    "RealScalarLike",
    "StateShape",
]
