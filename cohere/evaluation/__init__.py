"""The paper's evaluation: one definition of each metric, baselines, and the experiments.

:mod:`cohere.evaluation.metrics` holds every number the reports print (R^2 variants, output
variance, energy score and distance, k-NN precision/recall, distance to closest record,
classification scores, Harrell's C-index); :mod:`cohere.evaluation.baselines` the point
imputers and the random-neighbour floor that the generated modalities are compared with.
"""

from .baselines import (
    GaussianResidualSampler,
    IterativeImputer,
    KNNRegressorImputer,
    MeanImputer,
    MICESampler,
    MOFAImputer,
    RandomNeighbourSampler,
    ResidualBootstrapSampler,
    RidgeImputer,
)
from .metrics import (
    DCRResult,
    PrecisionRecall,
    R2Runs,
    balanced_accuracy,
    calibrated_coverage,
    calibrated_single_draw_r2,
    concordance_index,
    crps,
    distance_to_closest_record,
    energy_distance,
    energy_score,
    f1,
    interval_coverage,
    macro_f1,
    output_variance_pct,
    precision_recall,
    r2,
    r2_runs,
    rank_histogram,
    surv_array,
)

__all__ = [
    "DCRResult", "GaussianResidualSampler", "IterativeImputer", "KNNRegressorImputer", "MeanImputer",
    "MICESampler", "MOFAImputer", "PrecisionRecall", "R2Runs", "RandomNeighbourSampler",
    "ResidualBootstrapSampler", "RidgeImputer", "balanced_accuracy", "calibrated_coverage",
    "calibrated_single_draw_r2", "concordance_index", "crps", "distance_to_closest_record",
    "energy_distance", "energy_score", "f1", "interval_coverage", "macro_f1", "output_variance_pct",
    "precision_recall", "r2", "r2_runs", "rank_histogram", "surv_array",
]
