"""The paper's protocol constants, in one place (Zhou et al., TIP 2020, and the
authors' released nets and solver). Everything that means "the paper's value"
imports it from here; options and recipes that depart from the paper say so
where they are defined.

Sizes are in omkit's ``(D, H, W)`` order, D the axial axis: the paper's
32 x 32 x 16 patch is ``(16, 32, 32)``.
"""
from __future__ import annotations

# -- patches and overlap tiles (Sec. III-A) -------------------------------------------
PATCH_SIZE = (16, 32, 32)  # training patch and inference tile
# the centre of each inference tile whose prediction is kept; the paper's stride
# equals it (every voxel predicted once), so omkit's stride defaults to the kept centre
TILE_KEEP = (5, 20, 20)
# omkit's, not the paper's: the kept centre that tiles of PATCH_SIZE keep by default where
# the choice is omkit's (--inference auto on patch-trained models), measured as accurate as
# TILE_KEEP and faster, and the dense block of window-consistent training (docs/RESULTS.md,
# "Train as you infer")
FAST_TILE_KEEP = (8, 24, 24)
# three 2x2x2 max-poolings in FusionNet: every patch side must be divisible by 8
PATCH_DIVISOR = 8


def keep_for(size, keep, base=PATCH_SIZE) -> tuple[int, ...]:
    """A kept centre for tiles of ``size`` in the proportion ``keep`` has to tiles of
    ``base`` (TILE_KEEP and FAST_TILE_KEEP are for PATCH_SIZE)."""
    return tuple(max(1, min(int(s), round(int(s) * k / b))) for s, k, b in zip(size, keep, base))

# -- sampling and fusion (Sec. III-A) -------------------------------------------------
# task 2's training patches are centred inside the whole tumor dilated by this many
# voxels (a Euclidean ball) ...
SAMPLER_TUMOR_DILATION = 5.0
# ... and at inference task 2 labels task 1's coarse tumor mask dilated by as many
ROI_DILATION = 5.0
# task 1's coarse tumor mask: summed tumor-class probability above this
COARSE_TUMOR_THRESHOLD = 0.5

# -- online training-data transfer (Sec. III-B; the released loss layers) -------------
# a task-1 patch with at least this fraction of tumor voxels also trains task 2
TRANSFER_TUMOR_THRESHOLD = 0.4
# a task-1 or task-2 patch with at least this fraction of core voxels also trains task 3
TRANSFER_CORE_THRESHOLD = 0.5

# -- training schedule (Sec. IV-C; the released solver) -------------------------------
STAGE_EPOCHS = (1, 1, 18)  # curriculum: task 1, tasks 1-2, tasks 1-3
PATCHES_PER_EPOCH = (400_000, 400_000, 200_000)  # per task
BATCH_PER_TASK = 20
LR = 1e-3
MOMENTUM = 0.99
WEIGHT_DECAY = 5e-4
LR_STEP_EPOCHS = 4  # the learning rate is multiplied by LR_GAMMA every this many epochs
LR_GAMMA = 0.5

# -- post-processing (Sec. III-D) -----------------------------------------------------
# step 1: remove tumor components smaller than min(MAX_VOXELS, FRACTION * largest)
SMALL_COMPONENT_MAX_VOXELS = 2000
SMALL_COMPONENT_FRACTION = 0.1
# step 2: K-means on the edema of components with little enhancing tumor
KMEANS_GLOBAL_ET_RATIO = 0.1  # only when vol(ET) / vol(WT) of the case is below this
KMEANS_COMPONENT_ET_RATIO = 0.05  # and of the component
KMEANS_MAX_ET_VOXELS = 1000  # and the component's enhancing voxels are fewer
COMPONENT_CONNECTIVITY = 26
