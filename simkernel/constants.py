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
#: The in-context-learning phenomena of ``simkernel phenomena NAME`` (``phenomena.run``).
PHENOMENA = ("retrieval", "labels", "shift", "order", "prior")
#: The candidate predictors of ``strategies`` (which one a trained model follows): exact Bayes over the
#: pretraining concepts, the theory's kernel (normalised, clipped), label counts, the in-context
#: n-gram rule (no concepts needed), the uniform distribution (an untrained model) and the oracle
#: (the true concept).
PREDICTORS = ("bayes", "kernel", "clipped", "frequency", "ngram", "uniform", "oracle")
#: The small GPT-J presets of ``model.MODEL_PRESETS`` (tiny: tests; cpu: the CPU default;
#: ginc-*: GINC-sized, for a GPU).
MODEL_NAMES = ("tiny", "cpu", "ginc-4", "ginc-12", "ginc-16")
#: A head's weight on a demonstration: the max attention over its span (the paper's), the
#: attention on its label token, or the span's mean (``analysis.demo_weights``).
WEIGHTS = ("max", "label", "mean")
#: Head selection and reporting split the examples into disjoint halves of these sizes
#: (``analysis.split_indices``): heads are chosen on the first, scored on the second.
N_SELECT = 700
N_REPORT = 300
#: The ridge of every kernel: λ = DEFAULT_RIDGE · trace(Σ) / D.
DEFAULT_RIDGE = 0.01
#: Inputs x are enumerated exactly (Σ and the limits exact) up to this many sequences V^(k-1);
#: beyond, Monte Carlo inputs are drawn (DEFAULT_N_SAMPLES of them unless told otherwise).
EXACT_LIMIT = 20_000
DEFAULT_N_SAMPLES = 20_000


# ---------------------------------------------------------------------- table schemas
# One schema per result table, owned here so that the modules that compute a table, the figures
# that read it and the command line that writes it spell it once (``plots`` must not import the
# Numba-heavy modules that compute them).
#: convergence.csv (``convergence.run``); n_demos is an integer or "inf" for the exact limits.
CONVERGENCE_COLUMNS = ("n_demos", "estimator", "kernel", "metric", "mean", "ci_low", "ci_high", "n_prompts",
                       "n_worlds")
#: floors.csv (``convergence.concept_floors``).
FLOOR_COLUMNS = ("world", "concept", "prior", "kernel", "estimator", "floor_tv", "floor_se", "exact",
                 "eta", "eps", "eps_span", "span_dim", "eta2_eps", "eta2_eps_span", "identity_bound")
#: bayes.csv (``posterior.run``).
BAYES_COLUMNS = ("n_demos", "metric", "mean", "ci_low", "ci_high", "n_prompts")
#: icl_vs_bayes.csv (``icl_eval.run``).
ICL_COLUMNS = ("n_demos", "concepts", "metric", "mean", "ci_low", "ci_high", "n_prompts")
#: regime.csv (``regime.run``): one row per world, n (an integer, or inf for the floors), kernel,
#: estimator and metric.
REGIME_COLUMNS = ("world", "n_demos", "kernel", "estimator", "metric", "mean", "ci_low", "ci_high", "n_prompts")
#: regime_worlds.csv: one row per world x kernel x estimator (where the regime begins, the rate past
#: it, the crossover with the label frequencies).
REGIME_WORLD_COLUMNS = ("world", "kernel", "estimator", "n_max", "regime_n", "reached", "judged", "slope",
                        "slope_window", "ratio_max", "ratio_trend", "diverging", "c_pred", "crossover",
                        "crossover_lo", "crossover_hi", "crossover_pred", "floor", "floor_frequency", "band")
#: ``simkernel regime`` defaults: the grid n = 1, 2, 4, .., REGIME_N_MAX, doubled while needed up to
#: REGIME_N_CAP; the regime begins where measured / predicted stays within 1 ± REGIME_BAND.
REGIME_N_MAX = 256
REGIME_N_CAP = 65536
REGIME_BAND = 0.1
#: Power laws are fitted from this n on (``convergence`` and ``regime``; claim C1 names it): below it
#: the pre-asymptotic stretch dominates.
FIT_N_MIN = 4
#: An exact invariance (``phenomena``' checks, claim C7): a TV below this is zero.
INVARIANCE_TOL = 1e-12
#: "Trained to near the Bayes loss" (claims C5, C6): a run's validation loss within this many
#: nats/token of the Bayes floor (``train.TrainConfig``'s default target gap).
NEAR_BAYES_GAP = 0.05


# ---------------------------------------------------------------------- real LLMs (``simkernel llm``)
#: The paper's text tasks (``textdata.TASKS`` holds their datasets and templates; a test checks
#: that the names agree).
TEXT_TASKS = ("sst2", "rotten_tomatoes", "tweet_eval_hate", "tweet_eval_irony", "tweet_eval_offensive", "mnli")
#: How demonstrations are drawn: uniformly, class-balanced, or the most similar pool texts.
DEMO_MODES = ("random", "balanced", "similar")
#: Demonstrations per text prompt (8 keeps SST-2 prompts near 300 GPT-J tokens).
TEXT_N_DEMOS = 8
#: Weight dtypes of ``simkernel llm`` and their short names.
LLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
LLM_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
LLM_BATCH_SIZE = 8
LLM_N_EXAMPLES = 1000
