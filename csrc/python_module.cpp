// Makes the op library importable as the Python extension module omkit._C.
// Importing it runs the static TORCH_LIBRARY registrations; the module itself
// is empty, as the ops are reached through torch.ops.omkit. Not part of the
// CMake (libtorch-only) build.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "omkit's compiled torch ops (registered in torch.ops.omkit)",
      -1,    // no per-module state
      NULL,  // no methods
  };
  return PyModule_Create(&module_def);
}
}
