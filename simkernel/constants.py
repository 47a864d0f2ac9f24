"""Names only, cheap to import (no numpy): the choices the CLI offers in ``--help`` without
loading Numba or torch, and the one place each list is spelled.  The modules that implement them
import these names rather than repeat them."""

#: theory: Σ of the pretraining inputs; oracle: Σ_θ* of the prompt's concept; similarity: the
#: paper's P(o|x)ᵀP(o|x'); frequency: K ≡ 1, the demonstrations' label frequencies (the null model).
KERNELS = ("theory", "oracle", "similarity", "frequency")
#: averaged (1/n) Σ e(y_i) K_i; normalised Σ e(y_i) K_i / Σ K_i; clipped: normalised with max(K, 0).
ESTIMATORS = ("averaged", "normalised", "clipped")
#: Feature maps ψ(x) of the theory kernel.
FEATURES = ("belief", "operator")
#: The ridge of every kernel: λ = DEFAULT_RIDGE · trace(Σ) / D.
DEFAULT_RIDGE = 0.01
