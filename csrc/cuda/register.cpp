// The CUDA backend: every op of ops.h with the passes of cga_kernel.cu and tiles_kernel.cu.
// Plain C++ (the device guard is the generic one), compiled only in a CUDA build.
#include "../backend.h"

OMKIT_REGISTER_BACKEND(CUDA, cuda)
