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


# ---------------------------------------------------------------------- table schemas
# One schema per result table, owned here so that the modules that compute a table, the figures
# that read it and the command line that writes it spell it once (``plots`` must not import the
# Numba-heavy modules that compute them).
#: convergence.csv (``convergence.run``); n_demos is an integer or "inf" for the exact limits.
CONVERGENCE_COLUMNS = ("n_demos", "estimator", "kernel", "metric", "mean", "ci_low", "ci_high", "n_prompts",
                       "n_worlds")
#: floors.csv (``convergence.concept_floors``).
FLOOR_COLUMNS = ("world", "concept", "prior", "kernel", "estimator", "floor_tv", "floor_se", "exact",
                 "eta", "eps", "eps_span", "span_dim", "eta2_eps", "eta2_eps_span")
#: bayes.csv (``bayes.run``).
BAYES_COLUMNS = ("n_demos", "metric", "mean", "ci_low", "ci_high", "n_prompts")
#: icl_vs_bayes.csv (``icl_eval.run``).
ICL_COLUMNS = ("n_demos", "concepts", "metric", "mean", "ci_low", "ci_high", "n_prompts")
