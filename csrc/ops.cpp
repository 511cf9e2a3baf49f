// The schemas of every omkit op (the list: ops.h). The kernels register per
// backend (backend.h, OMKIT_REGISTER_BACKEND); fake (meta) kernels and autograd
// formulas are registered from Python (omkit/ops/_meta.py), named here with
// set_python_module so that torch finds them even when only this library was
// loaded (C++ users, torch.compile in a fresh process).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(omkit, m) {
  m.set_python_module("omkit.ops._meta");
#define OMKIT_DEFINE_OP(name, signature) m.def(#name signature);
  OMKIT_OPS(OMKIT_DEFINE_OP)
#undef OMKIT_DEFINE_OP
}
