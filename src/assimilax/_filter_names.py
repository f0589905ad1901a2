"""The names of the filters the CLI and `make_filter` build (`experiments.FILTERS` maps
them to classes): here, free of JAX, so the CLI checks them before starting JAX."""

FILTER_NAMES = (
    "etkf", "letkf", "enkf", "pf", "ensf", "hybrid", "sf", "enkf-n", "denkf", "extkf", "var3d",
    "oi", "ienks", "serial", "enks", "rhf", "ns-enkf", "lpf",
)  # fmt: skip

# Filters trained on a regime's own twin runs before use: `assimilax twin --regime R
# --filters learned` (trained on first use into the user cache; not on sensor files).
TRAINED_FILTERS = ("learned",)
