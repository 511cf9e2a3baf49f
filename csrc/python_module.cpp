// Makes the op library importable as the Python extension module omkit.ops._C.
// Importing it runs the static TORCH_LIBRARY registrations; the ops are reached
// through torch.ops.omkit. The module has one function, build_info(), saying
// what this binary was built with (omkit info, omkit selftest). Not part of the
// CMake (libtorch-only) build.
#include <Python.h>
#include <torch/version.h>

// setup.py defines OMKIT_CUDA_ARCHS in a CUDA build: the code targets nvcc compiled,
// '+'-separated (sm_90+compute_90: a cubin for sm_90 and PTX for compute_90).
#define OMKIT_STRINGIFY_(x) #x
#define OMKIT_STRINGIFY(x) OMKIT_STRINGIFY_(x)

namespace {

PyObject* build_info(PyObject*, PyObject*) {
#if defined(WITH_CUDA)
  const bool cuda = true;
#if defined(OMKIT_CUDA_ARCHS)
  const char* archs = OMKIT_STRINGIFY(OMKIT_CUDA_ARCHS);
#else
  const char* archs = "";
#endif
#else
  const bool cuda = false;
  const char* archs = "";
#endif
#if defined(NDEBUG)
  const bool debug = false;
#else
  const bool debug = true;
#endif
  return Py_BuildValue("{s:s,s:O,s:s,s:O}", "torch", TORCH_VERSION, "cuda", cuda ? Py_True : Py_False,
                       "cuda_archs", archs, "debug", debug ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "dict: the torch version the library was built against, whether it has CUDA kernels, the CUDA code "
     "targets compiled ('+'-separated, e.g. sm_90+compute_90) and whether it is a debug build"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "omkit's compiled torch ops (registered in torch.ops.omkit)",
      -1,  // no per-module state
      methods,
  };
  return PyModule_Create(&module_def);
}
}
