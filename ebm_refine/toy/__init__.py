"""The paper's 1-D toy regression benchmark: problems with exact densities, training, KL evaluation, and the
annotation-outlier experiment (plain vs DeepGUM training)."""
from .benchmark import (
    METHODS,
    BenchmarkConfig,
    GaussianRegressor,
    evaluation_grid,
    kl_divergence_on_grid,
    make_ebm,
    model_log_density,
    quick_config,
    run_benchmark,
    run_single,
    summarize,
    torch_threads,
    train_ebm,
    train_gaussian,
    with_overrides,
)
from .outliers import (
    OUTLIER_KINDS,
    OutlierConfig,
    inject_outliers,
    quick_outlier_config,
    run_outlier_benchmark,
    run_outlier_single,
)
from .problems import PROBLEMS, BimodalLogNormalProblem, HeteroscedasticSineProblem, ToyProblem, get_problem

__all__ = [k for k in dir() if not k.startswith("_")]
