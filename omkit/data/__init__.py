"""BraTS data: reading and validating case folders, the paper's preprocessing,
a preprocessed-case cache, k-fold splits, and a synthetic case generator."""
from .brats import (
    MODALITIES,
    NAMINGS,
    Case,
    CaseError,
    case_files,
    detect_naming,
    find_cases,
    load_case,
    load_cases,
    to_nifti_axes,
    to_omkit_axes,
    validate_cases,
)
from .cache import PreprocessedCache, default_cache_dir
from .preprocess import PREPROCESSING, Preprocessed, bounding_box, brain_mask, preprocess_case, uncrop
from .splits import kfold_split

__all__ = [
    "MODALITIES", "NAMINGS", "PREPROCESSING", "Case", "CaseError", "Preprocessed", "PreprocessedCache",
    "bounding_box", "brain_mask", "case_files", "default_cache_dir", "detect_naming", "find_cases",
    "kfold_split", "load_case", "load_cases", "preprocess_case", "to_nifti_axes", "to_omkit_axes",
    "uncrop", "validate_cases",
]
