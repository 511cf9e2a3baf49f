// The CPU backend: every op of ops.h with the passes of cga_kernel.cpp and tiles_kernel.cpp.
#include "../backend.h"

OMKIT_REGISTER_BACKEND(CPU, cpu)
