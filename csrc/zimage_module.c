/*
 * zimage_module.c - the CPython binding of the zimage C core; the only file that includes
 * Python.h / NumPy. Multi-phase init, module state, heap types. In Python terms:
 *
 *     class ZImageError(RuntimeError): ...
 *     def cuda_device_count() -> int: ...            # 0 without a GPU, driver, or CUDA build
 *     def cuda_compiled() -> bool: ...
 *     def read_safetensors(path) -> dict[str, ndarray[float32]]     # validated reader
 *     def dit_weight_manifest(config_json) -> list[tuple[str, tuple]]  # names/shapes the loader expects
 *     class Transformer:                              # a loaded ZImageTransformer2DModel
 *         def __init__(self, path: str, device: int = -1): ...
 *         def forward(self, latent: f32[C,F,H,W], t: float, cap: f32[L,Cc]) -> f32[C,F,H,W]
 *         def to(self, device: int) -> None
 *         config: dict; device: int
 *     class Qwen2Tokenizer: ...                       # (tokenizer section)
 *
 * Long C work runs with the GIL released under a per-object lock (bz2's pattern), so two
 * Python threads never drive one native object at once. Status codes become exceptions in
 * one place: zi_raise().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_21_API_VERSION
#include <numpy/arrayobject.h>

#include "dit.h"
#include "ops.h"
#include "safetensors.h"
#include "zi_common.h"

typedef struct {
    PyObject *ZImageError;
    PyTypeObject *TransformerType;
    PyTypeObject *TokenizerType;
    PyTypeObject *TextEncoderType;
    PyTypeObject *VaeType;
} ModuleState;

static ModuleState *get_state(PyObject *module) { return (ModuleState *)PyModule_GetState(module); }

/* The one place a zi_status becomes a Python exception. */
static PyObject *zi_raise(PyObject *module, zi_status st) {
    const char *msg = zi_last_error();
    switch (st) {
    case ZI_OK: PyErr_SetString(PyExc_SystemError, "zi_raise called without an error"); break;
    case ZI_ERR_NOMEM:
    case ZI_ERR_GPU_NOMEM: PyErr_SetString(PyExc_MemoryError, msg); break;
    case ZI_ERR_NOTFOUND: PyErr_SetString(PyExc_FileNotFoundError, msg); break;
    case ZI_ERR_IO: PyErr_SetString(PyExc_OSError, msg); break;
    case ZI_ERR_FORMAT:
    case ZI_ERR_ARG: PyErr_SetString(PyExc_ValueError, msg); break;
    case ZI_ERR_INTERRUPTED: PyErr_SetString(PyExc_KeyboardInterrupt, msg); break;
    case ZI_ERR_CUDA:
    case ZI_ERR_CUBLAS:
    case ZI_ERR_STATE:
    default: PyErr_SetString(module ? get_state(module)->ZImageError : PyExc_RuntimeError, msg); break;
    }
    return NULL;
}

/* Acquire a per-object lock, releasing the GIL only if we must wait (bz2's ACQUIRE_LOCK). */
#define ACQUIRE_LOCK(lock)                                  \
    do {                                                    \
        if (!PyThread_acquire_lock((lock), 0)) {            \
            Py_BEGIN_ALLOW_THREADS                          \
            PyThread_acquire_lock((lock), 1);               \
            Py_END_ALLOW_THREADS                            \
        }                                                   \
    } while (0)
#define RELEASE_LOCK(lock) PyThread_release_lock(lock)

/* A C-contiguous float32 array of ndim dims converted from any array-like, or NULL + TypeError/ValueError. */
static PyArrayObject *as_f32(PyObject *obj, int ndim, const char *what) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_FLOAT32, 0, 0, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!a) return NULL;
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got shape with %d", what, ndim, PyArray_NDIM(a));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *shape_tuple(int ndim, const int64_t *shape) {
    PyObject *t = PyTuple_New(ndim);
    if (!t) return NULL;
    for (int i = 0; i < ndim; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(shape[i]));
    return t;
}

/* ======================================================================================== */
/* module functions */

static PyObject *py_cuda_device_count(PyObject *module, PyObject *unused) {
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = zi_cuda_device_count();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(n);
}

static PyObject *py_cuda_compiled(PyObject *module, PyObject *unused) { return PyBool_FromLong(zi_cuda_compiled()); }

static PyObject *py_read_safetensors(PyObject *module, PyObject *arg) {
    PyObject *path_bytes = NULL, *dict = NULL;
    StArchive ar;
    zi_status st;
    if (!PyUnicode_FSConverter(arg, &path_bytes)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = st_open_file(&ar, PyBytes_AS_STRING(path_bytes));
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st != ZI_OK) return zi_raise(module, st);
    dict = PyDict_New();
    if (!dict) goto fail;
    for (int i = 0; i < ar.ntensors; i++) {
        const StTensor *t = &ar.tensors[i];
        npy_intp dims[ST_MAX_DIMS];
        for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
        PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(t->ndim, dims, NPY_FLOAT32);
        if (!a) goto fail;
        st = st_read_f32(&ar, t, PyArray_DATA(a));
        if (st != ZI_OK) { Py_DECREF(a); zi_raise(module, st); goto fail; }
        int rc = PyDict_SetItemString(dict, t->name, (PyObject *)a);
        Py_DECREF(a);
        if (rc < 0) goto fail;
    }
    st_close(&ar);
    return dict;
fail:
    st_close(&ar);
    Py_XDECREF(dict);
    return NULL;
}

static PyObject *py_dit_weight_manifest(PyObject *module, PyObject *arg) {
    PyObject *path_bytes = NULL, *list = NULL;
    DitConfig cfg;
    DitWeights w = {0};
    ZiWeightList wl = {0};
    zi_status st;
    if (!PyUnicode_FSConverter(arg, &path_bytes)) return NULL;
    st = dit_config_load(&cfg, PyBytes_AS_STRING(path_bytes));
    Py_DECREF(path_bytes);
    if (st == ZI_OK) st = dit_weight_list(&cfg, &w, &wl);
    if (st != ZI_OK) { zi_raise(module, st); goto done; }
    list = PyList_New(wl.n);
    if (!list) goto done;
    for (int i = 0; i < wl.n; i++) {
        PyObject *item = Py_BuildValue("(sN)", wl.specs[i].name, shape_tuple(wl.specs[i].ndim, wl.specs[i].shape));
        if (!item) { Py_CLEAR(list); goto done; }
        PyList_SET_ITEM(list, i, item);
    }
done:
    free(w.noise_refiner);
    free(w.context_refiner);
    free(w.layers);
    zi_weights_list_free(&wl);
    return list;
}

/* ======================================================================================== */
/* Transformer: a loaded ZImageTransformer2DModel */

typedef struct {
    PyObject_HEAD
    DitModel *model;
    PyThread_type_lock lock;
    PyObject *module;
} TransformerObject;

static PyObject *config_dict(const DitConfig *c) {
    return Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:d,s:O,s:d,s:d,s:[iii],s:[iii],s:[i],s:[i]}", "in_channels", c->in_channels,
        "dim", c->dim, "n_layers", c->n_layers, "n_refiner_layers", c->n_refiner_layers, "n_heads", c->n_heads,
        "head_dim", c->head_dim, "ffn_dim", c->ffn_dim, "cap_feat_dim", c->cap_feat_dim, "norm_eps", (double)c->norm_eps,
        c->qk_norm ? Py_True : Py_False, "rope_theta", (double)c->rope_theta, "t_scale", (double)c->t_scale,
        "axes_dims", c->axes_dims[0], c->axes_dims[1], c->axes_dims[2], "axes_lens", c->axes_lens[0], c->axes_lens[1],
        c->axes_lens[2], "all_patch_size", c->patch, "all_f_patch_size", c->f_patch);
}

static int Transformer_init(TransformerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "device", NULL};
    PyObject *path_bytes = NULL;
    int device = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|i", kwlist, PyUnicode_FSConverter, &path_bytes, &device)) return -1;
    if (self->model) { PyErr_SetString(PyExc_RuntimeError, "Transformer already initialised"); Py_DECREF(path_bytes); return -1; }
    DitModel *m = NULL;
    zi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dit_load(&m, PyBytes_AS_STRING(path_bytes), device);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st != ZI_OK) { zi_raise(self->module, st); return -1; }
    self->model = m;
    return 0;
}

static PyObject *Transformer_forward(TransformerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"latent", "t", "cap", NULL};
    PyObject *lat_obj, *cap_obj;
    double t;
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Transformer not initialised"); return NULL; }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OdO", kwlist, &lat_obj, &t, &cap_obj)) return NULL;
    PyArrayObject *lat = as_f32(lat_obj, 4, "latent (C, F, H, W)"), *cap = NULL, *out = NULL;
    if (!lat) return NULL;
    cap = as_f32(cap_obj, 2, "caption features (L, cap_feat_dim)");
    if (!cap) goto fail;
    const DitConfig *c = dit_config(self->model);
    npy_intp *ls = PyArray_DIMS(lat), *cs = PyArray_DIMS(cap);
    if (ls[0] != c->in_channels) {
        PyErr_Format(PyExc_ValueError, "latent has %ld channels, the model has in_channels=%d", (long)ls[0], c->in_channels);
        goto fail;
    }
    if (cs[1] != c->cap_feat_dim) {
        PyErr_Format(PyExc_ValueError, "caption features have width %ld, the model has cap_feat_dim=%d", (long)cs[1], c->cap_feat_dim);
        goto fail;
    }
    if (ls[1] > INT32_MAX || ls[2] > INT32_MAX || ls[3] > INT32_MAX || cs[0] > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "input too large");
        goto fail;
    }
    out = (PyArrayObject *)PyArray_SimpleNew(4, ls, NPY_FLOAT32);
    if (!out) goto fail;
    zi_status st;
    ACQUIRE_LOCK(self->lock);
    Py_BEGIN_ALLOW_THREADS
    st = dit_forward(self->model, PyArray_DATA(out), PyArray_DATA(lat), (int)ls[1], (int)ls[2], (int)ls[3], (float)t,
                     PyArray_DATA(cap), (int)cs[0]);
    Py_END_ALLOW_THREADS
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }
    Py_DECREF(lat);
    Py_DECREF(cap);
    return (PyObject *)out;
fail:
    Py_XDECREF(lat);
    Py_XDECREF(cap);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *Transformer_to(TransformerObject *self, PyObject *arg) {
    int device = PyLong_AsLong(arg);
    if (device == -1 && PyErr_Occurred()) return NULL;
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Transformer not initialised"); return NULL; }
    zi_status st;
    ACQUIRE_LOCK(self->lock);
    Py_BEGIN_ALLOW_THREADS
    st = dit_to_device(self->model, device);
    Py_END_ALLOW_THREADS
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) return zi_raise(self->module, st);
    Py_RETURN_NONE;
}

static PyObject *Transformer_get_config(TransformerObject *self, void *closure) {
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Transformer not initialised"); return NULL; }
    return config_dict(dit_config(self->model));
}

static PyObject *Transformer_get_device(TransformerObject *self, void *closure) {
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Transformer not initialised"); return NULL; }
    return PyLong_FromLong(dit_device(self->model));
}

static PyObject *Transformer_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    TransformerObject *self = (TransformerObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) { Py_DECREF(self); PyErr_SetString(PyExc_MemoryError, "cannot allocate a lock"); return NULL; }
    self->module = PyType_GetModule(type); /* for zi_raise's ZImageError */
    Py_XINCREF(self->module);
    return (PyObject *)self;
}

static void Transformer_dealloc(TransformerObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->model) dit_free(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_XDECREF(self->module);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef Transformer_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Transformer_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(latent, t, cap) -> float32 (C, F, H, W): one sample through the transformer"},
    {"to", (PyCFunction)Transformer_to, METH_O, "to(device: int): move the weights (-1 = CPU, N = cuda:N)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Transformer_getset[] = {
    {"config", (getter)Transformer_get_config, NULL, "the parsed config.json values", NULL},
    {"device", (getter)Transformer_get_device, NULL, "-1 for the CPU, else the CUDA ordinal", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Transformer_slots[] = {
    {Py_tp_new, Transformer_new},
    {Py_tp_init, Transformer_init},
    {Py_tp_dealloc, Transformer_dealloc},
    {Py_tp_methods, Transformer_methods},
    {Py_tp_getset, Transformer_getset},
    {Py_tp_doc, "Transformer(path, device=-1): the Z-Image DiT loaded from a diffusers transformer/ folder"},
    {0, NULL},
};

static PyType_Spec Transformer_spec = {
    .name = "zimage._zimage.Transformer",
    .basicsize = sizeof(TransformerObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Transformer_slots,
};

/* ==== tokenizer (begin) ==== */
/* ==== tokenizer (end) ==== */

/* ==== text encoder (begin) ==== */
/* ==== text encoder (end) ==== */

/* ==== vae (begin) ==== */
/* ==== vae (end) ==== */

/* ======================================================================================== */
/* module */

static PyMethodDef module_methods[] = {
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS, "number of usable CUDA GPUs (0 without GPU/driver/CUDA build)"},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "whether this build includes the CUDA backend"},
    {"read_safetensors", py_read_safetensors, METH_O, "read_safetensors(path) -> dict of float32 arrays (validated)"},
    {"dit_weight_manifest", py_dit_weight_manifest, METH_O,
     "dit_weight_manifest(config_json) -> [(name, shape)] the transformer loader expects"},
    {NULL, NULL, 0, NULL},
};

static int add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot) {
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);
    if (!*slot) return -1;
    return PyModule_AddType(module, *slot);
}

static int module_exec(PyObject *module) {
    ModuleState *s = get_state(module);
    if (_import_array() < 0) return -1;
    s->ZImageError = PyErr_NewExceptionWithDoc("zimage.ZImageError",
                                                "An error from the zimage C core (CUDA, cuBLAS, or an unusable object).",
                                                PyExc_RuntimeError, NULL);
    if (!s->ZImageError || PyModule_AddObjectRef(module, "ZImageError", s->ZImageError) < 0) return -1;
    if (add_type(module, &Transformer_spec, &s->TransformerType) < 0) return -1;
    /* ==== tokenizer type registration (begin) ==== */
    /* ==== tokenizer type registration (end) ==== */
    /* ==== text encoder type registration (begin) ==== */
    /* ==== text encoder type registration (end) ==== */
    /* ==== vae type registration (begin) ==== */
    /* ==== vae type registration (end) ==== */
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    ModuleState *s = get_state(module);
    Py_VISIT(s->ZImageError);
    Py_VISIT(s->TransformerType);
    Py_VISIT(s->TokenizerType);
    Py_VISIT(s->TextEncoderType);
    Py_VISIT(s->VaeType);
    return 0;
}

static int module_clear(PyObject *module) {
    ModuleState *s = get_state(module);
    Py_CLEAR(s->ZImageError);
    Py_CLEAR(s->TransformerType);
    Py_CLEAR(s->TokenizerType);
    Py_CLEAR(s->TextEncoderType);
    Py_CLEAR(s->VaeType);
    return 0;
}

static void module_free(void *module) { module_clear((PyObject *)module); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef zimage_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zimage._zimage",
    .m_doc = "C core of zimage: Z-Image-Turbo in C and CUDA",
    .m_size = sizeof(ModuleState),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__zimage(void) { return PyModuleDef_Init(&zimage_module); }
