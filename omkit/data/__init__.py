"""BraTS data: reading and validating case folders, the paper's preprocessing,
a preprocessed-case cache, k-fold splits, training patch sampling (the sampler
interface and spec grammar; the built-in samplers are a plug-in), and a
synthetic case generator."""
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
from .sampler_specs import parse_sampler_spec, split_task_specs
from .sampling import LabelRegionSampler, MixtureSampler, RegionSampler, region_indices, sampler_cache_key
from .splits import kfold_split

__all__ = [
    "MODALITIES", "NAMINGS", "PREPROCESSING", "Case", "CaseError", "LabelRegionSampler", "MixtureSampler",
    "Preprocessed", "PreprocessedCache", "RegionSampler", "bounding_box", "brain_mask", "case_files",
    "default_cache_dir", "detect_naming", "find_cases", "kfold_split", "load_case", "load_cases",
    "parse_sampler_spec", "preprocess_case", "region_indices", "sampler_cache_key", "split_task_specs",
    "to_nifti_axes", "to_omkit_axes", "uncrop", "validate_cases",
]
