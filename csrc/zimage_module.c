/*
 * zimage_module.c - the CPython binding of the zimage C core; the only file that includes
 * Python.h / NumPy. Multi-phase init, module state, heap types. In Python terms:
 *
 *     class ZImageError(RuntimeError): ...
 *     def cuda_device_count() -> int: ...            # 0 without a GPU, driver, or CUDA build
 *     def cuda_compiled() -> bool: ...
 *     def cuda_mem_info(device=0) -> (free, total); def cuda_device_properties(device=0) -> dict
 *     def cuda_memory_stats(device=0) -> dict(allocated, peak, pinned)   # zimage's own allocations
 *     def cuda_reset_peak_memory_stats(device=0); def cuda_empty_cache(device=0)
 *     def read_safetensors(path) -> dict[str, ndarray[float32]]     # validated reader
 *     def dit_weight_manifest(config_json) / text_encoder_weight_manifest / vae_weight_manifest
 *     def flow_match_schedule(steps, shift=3.0, sigmas=None) -> (sigmas, timesteps, t_model)
 *     def randn_cuda(shape, seed, offset=0, ...) / randn_cpu(shape, seed)   # torch's noise
 *     def encode_png(img) -> bytes; def write_png(path, img); def postprocess_uint8(img)
 *     class Transformer / TextEncoder / Vae:          # the C models behind zimage's wrappers
 *         def __init__(self, path: str, device: int = -1): ...   # -2: check now, load on first use
 *         def forward(latent, t, cap) / encode(input_ids, layer=-2) / decode(z)
 *         def to(self, device: int) -> None
 *         config: dict; device: int
 *     class Qwen2Tokenizer: from_pretrained, encode, decode, format_prompt, encode_prompt
 *     class ZImagePipeline: from_pretrained, to, __call__, encode_prompt, set_progress_bar_config,
 *                           enable_model_cpu_offload, enable_sequential_cpu_offload
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
#include "scheduler.h"
#include "zi_common.h"

typedef struct {
    PyObject *ZImageError;
    PyTypeObject *TransformerType;
    PyTypeObject *TokenizerType;
    PyTypeObject *TextEncoderType;
    PyTypeObject *VaeType;
    PyTypeObject *PipelineType;
} ModuleState;

static ModuleState *get_state(PyObject *module) { return (ModuleState *)PyModule_GetState(module); }

/* The one place a zi_status becomes a Python exception. */
static PyObject *zi_raise(PyObject *module, zi_status st) {
    const char *raw = zi_last_error();
    PyObject *type;
    switch (st) {
    case ZI_OK: type = PyExc_SystemError; raw = "zi_raise called without an error"; break;
    case ZI_ERR_NOMEM:
    case ZI_ERR_GPU_NOMEM: type = PyExc_MemoryError; break;
    case ZI_ERR_NOTFOUND: type = PyExc_FileNotFoundError; break;
    case ZI_ERR_IO: type = PyExc_OSError; break;
    case ZI_ERR_FORMAT:
    case ZI_ERR_ARG: type = PyExc_ValueError; break;
    case ZI_ERR_INTERRUPTED: type = PyExc_KeyboardInterrupt; break;
    case ZI_ERR_CUDA:
    case ZI_ERR_CUBLAS:
    case ZI_ERR_STATE:
    default: type = module ? get_state(module)->ZImageError : PyExc_RuntimeError; break;
    }
    /* messages may quote paths or tokens that are not valid UTF-8 */
    PyObject *msg = PyUnicode_DecodeUTF8(raw, (Py_ssize_t)strlen(raw), "replace");
    if (msg) {
        PyErr_SetObject(type, msg);
        Py_DECREF(msg);
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

static PyObject *py_cuda_mem_info(PyObject *module, PyObject *args) {
    int device = 0;
    if (!PyArg_ParseTuple(args, "|i", &device)) return NULL;
    size_t fr, tot;
    zi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = zi_cuda_mem_info(device, &fr, &tot);
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) return zi_raise(module, st);
    return Py_BuildValue("(nn)", (Py_ssize_t)fr, (Py_ssize_t)tot);
}

static PyObject *py_cuda_device_properties(PyObject *module, PyObject *args) {
    int device = 0, sms = 0, tps = 0, major = 0, minor = 0;
    char name[256];
    if (!PyArg_ParseTuple(args, "|i", &device)) return NULL;
    zi_status st = zi_cuda_device_props(device, name, sizeof name, &sms, &tps, &major, &minor);
    if (st != ZI_OK) return zi_raise(module, st);
    return Py_BuildValue("{s:s,s:i,s:i,s:i,s:i}", "name", name, "multi_processor_count", sms,
                         "max_threads_per_multi_processor", tps, "major", major, "minor", minor);
}

static PyObject *py_cuda_compiled(PyObject *module, PyObject *unused) { return PyBool_FromLong(zi_cuda_compiled()); }

static PyObject *py_cuda_memory_stats(PyObject *module, PyObject *args) {
    int device = 0;
    ZiMemStats s;
    if (!PyArg_ParseTuple(args, "|i", &device)) return NULL;
    zi_status st = zi_cuda_memory_stats(device, &s);
    if (st != ZI_OK) return zi_raise(module, st);
    return Py_BuildValue("{s:n,s:n,s:n}", "allocated", (Py_ssize_t)s.allocated, "peak", (Py_ssize_t)s.peak, "pinned",
                         (Py_ssize_t)s.pinned);
}

static PyObject *py_cuda_reset_peak_memory_stats(PyObject *module, PyObject *args) {
    int device = 0;
    if (!PyArg_ParseTuple(args, "|i", &device)) return NULL;
    zi_status st = zi_cuda_reset_peak_memory(device);
    if (st != ZI_OK) return zi_raise(module, st);
    Py_RETURN_NONE;
}

static PyObject *py_cuda_empty_cache(PyObject *module, PyObject *args) {
    int device = 0;
    if (!PyArg_ParseTuple(args, "|i", &device)) return NULL;
    zi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = zi_cuda_empty_cache(device); /* waits for the device's queued work */
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) return zi_raise(module, st);
    Py_RETURN_NONE;
}

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

static PyObject *py_flow_match_schedule(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"steps", "shift", "sigmas", "num_train_timesteps", NULL};
    int steps, ntt = 1000;
    double shift = 3.0;
    PyObject *sig_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|dOi", kwlist, &steps, &shift, &sig_obj, &ntt)) return NULL;
    PyArrayObject *sig = NULL;
    if (sig_obj != Py_None) {
        sig = as_f32(sig_obj, 1, "sigmas");
        if (!sig) return NULL;
        if (PyArray_DIM(sig, 0) != steps) {
            PyErr_Format(PyExc_ValueError, "%ld sigmas given for %d steps", (long)PyArray_DIM(sig, 0), steps);
            Py_DECREF(sig);
            return NULL;
        }
    }
    ZiSchedule s;
    zi_status st = zi_schedule_make(&s, steps, sig ? PyArray_DATA(sig) : NULL, (float)shift, ntt);
    Py_XDECREF(sig);
    if (st != ZI_OK) return zi_raise(module, st);
    npy_intp n1 = steps + 1, n = steps;
    PyObject *a = PyArray_SimpleNew(1, &n1, NPY_FLOAT32), *b = PyArray_SimpleNew(1, &n, NPY_FLOAT32),
             *c = PyArray_SimpleNew(1, &n, NPY_FLOAT32), *res = NULL;
    if (a && b && c) {
        memcpy(PyArray_DATA((PyArrayObject *)a), s.sigmas, (size_t)n1 * sizeof(float));
        memcpy(PyArray_DATA((PyArrayObject *)b), s.timesteps, (size_t)n * sizeof(float));
        memcpy(PyArray_DATA((PyArrayObject *)c), s.t_model, (size_t)n * sizeof(float));
        res = PyTuple_Pack(3, a, b, c);
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    zi_schedule_free(&s);
    return res;
}

/* ======================================================================================== */
/* The model types (Transformer, TextEncoder, Vae) share one object layout and their lifetime:
   load in __init__, to(device), config, device, dealloc; a ModelKind adapts each model's C API. */

typedef struct ModelKind {
    const char *name;                                         /* type name, for messages        */
    zi_status (*load)(void **model, const char *dir, int device);
    zi_status (*to_device)(void *model, int device);
    int (*device)(const void *model);
    void (*free)(void *model);
    PyObject *(*config)(const void *model);                   /* the parsed config as a dict    */
} ModelKind;

typedef struct {
    PyObject_HEAD
    void *model;                    /* DitModel, TeModel or VaeModel                  */
    const ModelKind *kind;
    PyThread_type_lock lock;        /* one thread drives a model at a time            */
    PyObject *module;               /* for zi_raise's ZImageError                     */
} ModelObject;

static PyObject *model_new(PyTypeObject *type, const ModelKind *kind) {
    ModelObject *self = (ModelObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->kind = kind;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) { Py_DECREF(self); PyErr_SetString(PyExc_MemoryError, "cannot allocate a lock"); return NULL; }
    self->module = PyType_GetModule(type);
    Py_XINCREF(self->module);
    return (PyObject *)self;
}

static int model_ready(ModelObject *self) {
    if (self->model) return 1;
    PyErr_Format(PyExc_RuntimeError, "%s not initialised", self->kind->name);
    return 0;
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "device", NULL};
    PyObject *path_bytes = NULL;
    int device = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|i", kwlist, PyUnicode_FSConverter, &path_bytes, &device)) return -1;
    if (self->model) {
        PyErr_Format(PyExc_RuntimeError, "%s already initialised", self->kind->name);
        Py_DECREF(path_bytes);
        return -1;
    }
    void *m = NULL;
    zi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = self->kind->load(&m, PyBytes_AS_STRING(path_bytes), device);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st != ZI_OK) { zi_raise(self->module, st); return -1; }
    self->model = m;
    return 0;
}

/* fn(model, device) with the GIL released under the model's lock: .to(device) and, for the text
   encoder and the VAE, enable_offload(device) (weights to host memory, run on device) */
static PyObject *model_device_call(ModelObject *self, PyObject *arg, zi_status (*fn)(void *, int)) {
    int device = PyLong_AsLong(arg);
    if (device == -1 && PyErr_Occurred()) return NULL;
    if (!model_ready(self)) return NULL;
    zi_status st;
    ACQUIRE_LOCK(self->lock);
    Py_BEGIN_ALLOW_THREADS
    st = fn(self->model, device);
    Py_END_ALLOW_THREADS
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) return zi_raise(self->module, st);
    Py_RETURN_NONE;
}

static PyObject *Model_to(ModelObject *self, PyObject *arg) { return model_device_call(self, arg, self->kind->to_device); }

static PyObject *Model_get_config(ModelObject *self, void *closure) {
    return model_ready(self) ? self->kind->config(self->model) : NULL;
}

static PyObject *Model_get_device(ModelObject *self, void *closure) {
    return model_ready(self) ? PyLong_FromLong(self->kind->device(self->model)) : NULL;
}

static void Model_dealloc(ModelObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->model) self->kind->free(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_XDECREF(self->module);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyGetSetDef Model_getset[] = {
    {"config", (getter)Model_get_config, NULL, "the parsed config.json values", NULL},
    {"device", (getter)Model_get_device, NULL, "-1 for the CPU, else the CUDA ordinal", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ModelKind adapters: the typed C APIs behind void pointers */
#define MODEL_KIND(prefix, Type, type_name, config_fn)                                                   \
    static zi_status prefix##_kind_load(void **m, const char *dir, int device) {                         \
        Type *x = NULL;                                                                                  \
        zi_status st = prefix##_load(&x, dir, device);                                                   \
        *m = x;                                                                                          \
        return st;                                                                                       \
    }                                                                                                    \
    static zi_status prefix##_kind_to(void *m, int device) { return prefix##_to_device(m, device); }     \
    static int prefix##_kind_device(const void *m) { return prefix##_device(m); }                        \
    static void prefix##_kind_free(void *m) { prefix##_free(m); }                                        \
    static PyObject *prefix##_kind_config(const void *m) { return config_fn(prefix##_config(m)); }       \
    static const ModelKind prefix##_kind = {type_name, prefix##_kind_load, prefix##_kind_to,             \
                                            prefix##_kind_device, prefix##_kind_free, prefix##_kind_config}

/* ======================================================================================== */
/* Transformer: a loaded ZImageTransformer2DModel */

typedef ModelObject TransformerObject; /* model: DitModel */

static PyObject *config_dict(const DitConfig *c) {
    return Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:d,s:O,s:d,s:d,s:[iii],s:[iii],s:[i],s:[i]}", "in_channels", c->in_channels,
        "dim", c->dim, "n_layers", c->n_layers, "n_refiner_layers", c->n_refiner_layers, "n_heads", c->n_heads,
        "head_dim", c->head_dim, "ffn_dim", c->ffn_dim, "cap_feat_dim", c->cap_feat_dim, "norm_eps", (double)c->norm_eps,
        "qk_norm", c->qk_norm ? Py_True : Py_False, "rope_theta", (double)c->rope_theta, "t_scale", (double)c->t_scale,
        "axes_dims", c->axes_dims[0], c->axes_dims[1], c->axes_dims[2], "axes_lens", c->axes_lens[0], c->axes_lens[1],
        c->axes_lens[2], "all_patch_size", c->patch, "all_f_patch_size", c->f_patch);
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

MODEL_KIND(dit, DitModel, "Transformer", config_dict);

static PyObject *Transformer_new(PyTypeObject *type, PyObject *args, PyObject *kw) { return model_new(type, &dit_kind); }

static PyMethodDef Transformer_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Transformer_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(latent, t, cap) -> float32 (C, F, H, W): one sample through the transformer"},
    {"to", (PyCFunction)Model_to, METH_O, "to(device: int): move the weights (-1 = CPU, N = cuda:N)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Transformer_slots[] = {
    {Py_tp_new, Transformer_new},
    {Py_tp_init, Model_init},
    {Py_tp_dealloc, Model_dealloc},
    {Py_tp_methods, Transformer_methods},
    {Py_tp_getset, Model_getset},
    {Py_tp_doc, "Transformer(path, device=-1): the Z-Image DiT loaded from a diffusers transformer/ folder"},
    {0, NULL},
};

static PyType_Spec Transformer_spec = {
    .name = "zimage._zimage.Transformer",
    .basicsize = sizeof(ModelObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Transformer_slots,
};

/* ==== rng (begin) ==== */
/* torch.randn reproduced on the host, bit for bit (csrc/rng.c). In Python terms:
 *     def randn_cuda(shape, seed, offset=0, sms=132, threads_per_sm=2048) -> f32 ndarray
 *         # = torch.randn(shape, generator=cuda generator (seed, philox offset)) on such a GPU
 *     def philox_offset_increment(n, sms=132, threads_per_sm=2048) -> int   # offset growth per draw
 *     def randn_cpu(shape, seed=None, state=None, kernel="native") -> f32 ndarray
 *         # = torch.randn(shape, generator=torch.Generator().manual_seed(seed)); or, with
 *         # state (a writable 5056-byte buffer in torch's get_state() layout), continue from it
 *         # and write the advanced state back. kernel: "native", "avx2", "avx512", "default".
 *     def cpu_generator_state(seed) -> bytes    # torch.Generator().manual_seed(seed).get_state()
 * Shapes are an int or a sequence of ints >= 0; seeds are ints in [-2^63, 2^64) (negative ones
 * wrap, as torch's manual_seed does). Bad shapes, seeds and states raise ValueError.
 */
#include "rng.h"

/* shape: an int or a sequence of ints >= 0 -> dims, ndim, element count */
static int rng_parse_shape(PyObject *obj, int *ndim, npy_intp *dims, size_t *count) {
    PyObject *seq = NULL;
    size_t n = 1;
    if (PyIndex_Check(obj) && !PyBool_Check(obj) && !PySequence_Check(obj)) {
        seq = PyTuple_Pack(1, obj);
    } else if (PySequence_Check(obj) && !PyUnicode_Check(obj) && !PyBytes_Check(obj)) {
        seq = PySequence_Tuple(obj);
    }
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "shape must be an int or a sequence of ints, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t nd = PyTuple_GET_SIZE(seq);
    if (nd > NPY_MAXDIMS) {
        PyErr_Format(PyExc_ValueError, "shape has %zd dimensions, at most %d are supported", nd, NPY_MAXDIMS);
        goto fail;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i);
        if (PyBool_Check(item) || !PyIndex_Check(item)) {
            PyErr_Format(PyExc_ValueError, "shape entries must be ints, got %.100s", Py_TYPE(item)->tp_name);
            goto fail;
        }
        Py_ssize_t d = PyNumber_AsSsize_t(item, NULL);
        if (d == -1 && PyErr_Occurred()) goto fail;
        if (d < 0) {
            PyErr_Format(PyExc_ValueError, "shape entries must be >= 0, got %zd", d);
            goto fail;
        }
        if (d > 0 && n > (size_t)PY_SSIZE_T_MAX / sizeof(float) / (size_t)d) {
            PyErr_SetString(PyExc_ValueError, "shape has too many elements");
            goto fail;
        }
        n *= (size_t)d;
        dims[i] = (npy_intp)d;
    }
    *ndim = (int)nd;
    *count = n;
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* seed: an int in [-2^63, 2^64); negative values wrap to uint64 like torch's manual_seed */
static int rng_parse_seed(PyObject *obj, uint64_t *seed) {
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_ValueError, "seed must be an int, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *v = PyNumber_Index(obj);
    if (!v) return -1;
    int overflow = 0;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow == 0 && !(s == -1 && PyErr_Occurred())) {
        *seed = (uint64_t)s;
    } else if (overflow > 0) {
        PyErr_Clear();
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            overflow = -1;
        } else {
            *seed = (uint64_t)u;
            overflow = 0;
        }
    }
    Py_DECREF(v);
    if (overflow) {
        PyErr_SetString(PyExc_ValueError, "seed must be in [-2**63, 2**64)");
        return -1;
    }
    return PyErr_Occurred() ? -1 : 0;
}

static int rng_parse_kernel(PyObject *obj, ZiCpuRandnKind *kind) {
    const char *s = obj == Py_None ? "native" : PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (!s) {
        PyErr_SetString(PyExc_ValueError, "kernel must be one of 'native', 'avx2', 'avx512', 'default'");
        return -1;
    }
    if (!strcmp(s, "native")) *kind = ZI_CPU_RANDN_NATIVE;
    else if (!strcmp(s, "avx2") || !strcmp(s, "avx512")) *kind = ZI_CPU_RANDN_AVX2;
    else if (!strcmp(s, "default")) *kind = ZI_CPU_RANDN_SCALAR;
    else {
        PyErr_Format(PyExc_ValueError, "unknown CPU randn kernel %.50s (native, avx2, avx512, default)", s);
        return -1;
    }
    return 0;
}

static PyObject *py_randn_cuda(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"shape", "seed", "offset", "sms", "threads_per_sm", NULL};
    PyObject *shape_obj, *seed_obj, *offset_obj = NULL;
    int sms = 132, tps = 2048, ndim;
    npy_intp dims[NPY_MAXDIMS];
    size_t n;
    uint64_t seed, offset = 0;
    zi_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Oii", kwlist, &shape_obj, &seed_obj, &offset_obj, &sms, &tps)) return NULL;
    if (rng_parse_shape(shape_obj, &ndim, dims, &n) < 0 || rng_parse_seed(seed_obj, &seed) < 0) return NULL;
    if (offset_obj) {
        if (PyBool_Check(offset_obj) || !PyIndex_Check(offset_obj)) {
            PyErr_SetString(PyExc_ValueError, "offset must be an int >= 0");
            return NULL;
        }
        PyObject *v = PyNumber_Index(offset_obj);
        if (!v) return NULL;
        offset = PyLong_AsUnsignedLongLong(v);
        Py_DECREF(v);
        if (offset == (uint64_t)-1 && PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "offset must be an int in [0, 2**64)");
            return NULL;
        }
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(ndim, dims, NPY_FLOAT32);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = zi_randn_cuda_philox(PyArray_DATA(out), n, seed, offset, sms, tps);
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) {
        Py_DECREF(out);
        return zi_raise(module, st);
    }
    return (PyObject *)out;
}

static PyObject *py_philox_offset_increment(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n", "sms", "threads_per_sm", NULL};
    unsigned long long n;
    int sms = 132, tps = 2048;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "K|ii", kwlist, &n, &sms, &tps)) return NULL;
    if (sms <= 0 || tps < 256) {
        PyErr_Format(PyExc_ValueError, "need sms >= 1 and threads_per_sm >= 256, got %d and %d", sms, tps);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(zi_philox_offset_increment(n, sms, tps));
}

static PyObject *py_randn_cpu(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"shape", "seed", "state", "kernel", NULL};
    PyObject *shape_obj, *seed_obj = Py_None, *state_obj = Py_None, *kernel_obj = Py_None;
    int ndim;
    npy_intp dims[NPY_MAXDIMS];
    size_t n;
    uint64_t seed = 0;
    ZiCpuRandnKind kind;
    Py_buffer view = {0};
    PyArrayObject *out = NULL;
    ZiCpuGenerator *g = NULL;
    zi_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOO", kwlist, &shape_obj, &seed_obj, &state_obj, &kernel_obj)) return NULL;
    if (rng_parse_shape(shape_obj, &ndim, dims, &n) < 0 || rng_parse_kernel(kernel_obj, &kind) < 0) return NULL;
    if ((seed_obj == Py_None) == (state_obj == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "randn_cpu needs exactly one of seed and state");
        return NULL;
    }
    if (seed_obj != Py_None && rng_parse_seed(seed_obj, &seed) < 0) return NULL;
    g = PyMem_Malloc(sizeof *g);
    if (!g) return PyErr_NoMemory();
    if (state_obj != Py_None) {
        if (PyObject_GetBuffer(state_obj, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "state must be a writable contiguous buffer (a bytearray)");
            goto fail;
        }
        st = zi_cpu_generator_unpack(g, view.buf, (size_t)view.len);
        if (st != ZI_OK) { zi_raise(module, st); goto fail; }
    } else {
        zi_cpu_generator_seed(g, seed);
    }
    out = (PyArrayObject *)PyArray_SimpleNew(ndim, dims, NPY_FLOAT32);
    if (!out) goto fail;
    Py_BEGIN_ALLOW_THREADS
    st = zi_randn_cpu_generator(g, PyArray_DATA(out), n, kind);
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) { zi_raise(module, st); goto fail; }
    if (view.buf) zi_cpu_generator_pack(g, view.buf);
    if (view.obj) PyBuffer_Release(&view);
    PyMem_Free(g);
    return (PyObject *)out;
fail:
    if (view.obj) PyBuffer_Release(&view);
    PyMem_Free(g);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_cpu_generator_state(PyObject *module, PyObject *arg) {
    uint64_t seed;
    if (rng_parse_seed(arg, &seed) < 0) return NULL;
    ZiCpuGenerator *g = PyMem_Malloc(sizeof *g);
    PyObject *res = PyBytes_FromStringAndSize(NULL, ZI_CPU_GEN_STATE_BYTES);
    if (!g || !res) {
        PyMem_Free(g);
        Py_XDECREF(res);
        return PyErr_NoMemory();
    }
    zi_cpu_generator_seed(g, seed);
    zi_cpu_generator_pack(g, (uint8_t *)PyBytes_AS_STRING(res));
    PyMem_Free(g);
    return res;
}
/* ==== rng (end) ==== */

/* ==== tokenizer (begin) ==== */
/* Qwen2Tokenizer: the Qwen2/Qwen3 byte-level BPE tokenizer (HF tokenizers semantics). In Python terms:
 *     class Qwen2Tokenizer:
 *         @classmethod
 *         def from_pretrained(cls, path, subfolder=None) -> "Qwen2Tokenizer"   # folder with tokenizer.json
 *         def encode(self, text: str) -> list[int]                            # no BOS/EOS added
 *         def decode(self, ids, skip_special_tokens=False) -> str
 *         def format_prompt(self, prompt: str) -> str                         # the pipeline's chat template
 *         def encode_prompt(self, prompt: str, max_sequence_length=512) -> list[int]
 *         vocab_size: int      # incl. added tokens (151669); also len(tok)
 *         eos_token_id, pad_token_id, bos_token_id: int | None           # from tokenizer_config.json
 * A loaded ZiTokenizer is immutable, so no lock: calls run with the GIL released.
 */
#include "tokenizer.h"

typedef struct {
    PyObject_HEAD
    ZiTokenizer *tok;
    PyObject *module;
} TokenizerObject;

static PyObject *Tokenizer_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyErr_SetString(PyExc_TypeError, "use Qwen2Tokenizer.from_pretrained(path, subfolder=None)");
    return NULL;
}

static PyObject *Tokenizer_from_pretrained(PyTypeObject *cls, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "subfolder", NULL};
    PyObject *path_bytes = NULL, *sub_obj = Py_None, *sub_bytes = NULL, *dir = NULL;
    TokenizerObject *self = NULL;
    ZiTokenizer *tok = NULL;
    zi_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O", kwlist, PyUnicode_FSConverter, &path_bytes, &sub_obj)) return NULL;
    if (sub_obj != Py_None && PyObject_IsTrue(sub_obj)) { /* os.path.join(path, subfolder) */
        if (!PyUnicode_FSConverter(sub_obj, &sub_bytes)) goto done;
        dir = PyBytes_FromFormat("%s/%s", PyBytes_AS_STRING(path_bytes), PyBytes_AS_STRING(sub_bytes));
    } else {
        dir = Py_NewRef(path_bytes);
    }
    if (!dir) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = zi_tokenizer_load(&tok, PyBytes_AS_STRING(dir));
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) { zi_raise(PyType_GetModule(cls), st); goto done; }
    self = (TokenizerObject *)cls->tp_alloc(cls, 0);
    if (!self) { zi_tokenizer_free(tok); goto done; }
    self->tok = tok;
    self->module = Py_XNewRef(PyType_GetModule(cls));
done:
    Py_XDECREF(path_bytes);
    Py_XDECREF(sub_bytes);
    Py_XDECREF(dir);
    return (PyObject *)self;
}

static PyObject *ids_to_list(const int32_t *ids, size_t n) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    return list;
}

static PyObject *Tokenizer_encode(TokenizerObject *self, PyObject *arg) {
    Py_ssize_t len;
    int32_t *ids = NULL;
    size_t n = 0;
    zi_status st;
    if (!PyUnicode_Check(arg)) return PyErr_Format(PyExc_TypeError, "encode() expects a str, got %.100s", Py_TYPE(arg)->tp_name);
    const char *s = PyUnicode_AsUTF8AndSize(arg, &len); /* lone surrogates: UnicodeEncodeError (a ValueError) */
    if (!s) return NULL;
    Py_BEGIN_ALLOW_THREADS /* s belongs to the immutable str we hold a reference to */
    st = zi_tokenizer_encode(self->tok, s, (size_t)len, &ids, &n);
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) return zi_raise(self->module, st);
    PyObject *list = ids_to_list(ids, n);
    free(ids);
    return list;
}

static PyObject *Tokenizer_decode(TokenizerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ids", "skip_special_tokens", NULL};
    PyObject *ids_obj, *seq = NULL, *res = NULL;
    int skip = 0;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t len = 0;
    zi_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &ids_obj, &skip)) return NULL;
    if (PyLong_Check(ids_obj)) seq = PyTuple_Pack(1, ids_obj); /* a single id, as HF accepts */
    else seq = PySequence_Fast(ids_obj, "decode() expects a sequence of int token ids");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t vocab = zi_tokenizer_vocab_size(self->tok);
    ids = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *ids);
    if (!ids) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i)); /* any int-like (__index__) */
        if (v == -1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) v = LLONG_MAX; /* reported below */
            else goto done;
            PyErr_Clear();
        }
        if (v < 0 || v >= vocab) {
            PyErr_Format(PyExc_ValueError, "decode: token id %lld (at index %zd) is not in the vocabulary (size %d)", v, i,
                         (int)vocab);
            goto done;
        }
        ids[i] = (int32_t)v;
    }
    Py_BEGIN_ALLOW_THREADS
    st = zi_tokenizer_decode(self->tok, ids, (size_t)n, skip, &text, &len);
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) { zi_raise(self->module, st); goto done; }
    res = PyUnicode_DecodeUTF8(text, (Py_ssize_t)len, "strict"); /* valid UTF-8 by construction */
done:
    free(text);
    PyMem_Free(ids);
    Py_DECREF(seq);
    return res;
}

static PyObject *Tokenizer_format_prompt(TokenizerObject *self, PyObject *arg) {
    Py_ssize_t len;
    char *text = NULL;
    size_t tl;
    if (!PyUnicode_Check(arg)) return PyErr_Format(PyExc_TypeError, "format_prompt() expects a str, got %.100s", Py_TYPE(arg)->tp_name);
    const char *s = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!s) return NULL;
    zi_status st = zi_tokenizer_format_prompt(s, (size_t)len, &text, &tl);
    if (st != ZI_OK) return zi_raise(self->module, st);
    PyObject *res = PyUnicode_DecodeUTF8(text, (Py_ssize_t)tl, "strict");
    free(text);
    return res;
}

static PyObject *Tokenizer_encode_prompt(TokenizerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prompt", "max_sequence_length", NULL};
    PyObject *prompt;
    Py_ssize_t max_len = 512, len;
    int32_t *ids = NULL;
    size_t n = 0;
    zi_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|n", kwlist, &prompt, &max_len)) return NULL;
    if (max_len < 1) return PyErr_Format(PyExc_ValueError, "max_sequence_length must be at least 1, got %zd", max_len);
    const char *s = PyUnicode_AsUTF8AndSize(prompt, &len);
    if (!s) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = zi_tokenizer_encode_prompt(self->tok, s, (size_t)len, (size_t)max_len, &ids, &n);
    Py_END_ALLOW_THREADS
    if (st != ZI_OK) return zi_raise(self->module, st);
    PyObject *list = ids_to_list(ids, n);
    free(ids);
    return list;
}

static PyObject *id_or_none(int32_t id) { return id < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(id); }
static PyObject *Tokenizer_get_vocab_size(TokenizerObject *self, void *c) { return PyLong_FromLong(zi_tokenizer_vocab_size(self->tok)); }
static PyObject *Tokenizer_get_eos(TokenizerObject *self, void *c) { return id_or_none(zi_tokenizer_eos_id(self->tok)); }
static PyObject *Tokenizer_get_pad(TokenizerObject *self, void *c) { return id_or_none(zi_tokenizer_pad_id(self->tok)); }
static PyObject *Tokenizer_get_bos(TokenizerObject *self, void *c) { return id_or_none(zi_tokenizer_bos_id(self->tok)); }
static Py_ssize_t Tokenizer_len(TokenizerObject *self) { return zi_tokenizer_vocab_size(self->tok); }

static void Tokenizer_dealloc(TokenizerObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    zi_tokenizer_free(self->tok);
    Py_XDECREF(self->module);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef Tokenizer_methods[] = {
    {"from_pretrained", (PyCFunction)(void (*)(void))Tokenizer_from_pretrained, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_pretrained(path, subfolder=None): load tokenizer.json (+ tokenizer_config.json) from path[/subfolder]"},
    {"encode", (PyCFunction)Tokenizer_encode, METH_O, "encode(text) -> list[int]: the ids HF tokenizers gives (no BOS/EOS)"},
    {"decode", (PyCFunction)(void (*)(void))Tokenizer_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(ids, skip_special_tokens=False) -> str (invalid UTF-8 becomes U+FFFD)"},
    {"format_prompt", (PyCFunction)Tokenizer_format_prompt, METH_O,
     "format_prompt(prompt) -> '<|im_start|>user\\n' + prompt + '<|im_end|>\\n<|im_start|>assistant\\n'"},
    {"encode_prompt", (PyCFunction)(void (*)(void))Tokenizer_encode_prompt, METH_VARARGS | METH_KEYWORDS,
     "encode_prompt(prompt, max_sequence_length=512) -> list[int]: template, encode, keep the first ids"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Tokenizer_getset[] = {
    {"vocab_size", (getter)Tokenizer_get_vocab_size, NULL, "number of ids, added tokens included (151669 for Qwen3)", NULL},
    {"eos_token_id", (getter)Tokenizer_get_eos, NULL, "id of tokenizer_config.json's eos_token, or None", NULL},
    {"pad_token_id", (getter)Tokenizer_get_pad, NULL, "id of tokenizer_config.json's pad_token, or None", NULL},
    {"bos_token_id", (getter)Tokenizer_get_bos, NULL, "id of tokenizer_config.json's bos_token, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Tokenizer_slots[] = {
    {Py_tp_new, Tokenizer_new},
    {Py_tp_dealloc, Tokenizer_dealloc},
    {Py_tp_methods, Tokenizer_methods},
    {Py_tp_getset, Tokenizer_getset},
    {Py_mp_length, Tokenizer_len},
    {Py_tp_doc, "Qwen2Tokenizer.from_pretrained(path, subfolder=None): the Qwen2/Qwen3 byte-level BPE tokenizer"},
    {0, NULL},
};

static PyType_Spec Tokenizer_spec = {
    .name = "zimage._zimage.Qwen2Tokenizer",
    .basicsize = sizeof(TokenizerObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Tokenizer_slots,
};
/* ==== tokenizer (end) ==== */

/* ==== text encoder (begin) ==== */
/* TextEncoder: a loaded transformers Qwen3Model (text_encoder/). In Python terms:
 *     class TextEncoder:
 *         def __init__(self, path: str, device: int = -1): ...
 *         def encode(self, input_ids: int64[L], layer: int = -2) -> f32[L, hidden_size]   # hidden_states[layer]
 *         def to(self, device: int) -> None                   # resident on device
 *         def enable_offload(self, device: int) -> None       # layers in host memory, streamed to device
 *         def limit_layers(self, layer: int) -> None          # hold weights up to hidden_states[layer]
 *         config: dict; device: int; offloaded: bool
 *     def text_encoder_weight_manifest(config_json, prefix="model.") -> list[tuple[str, tuple]]
 */
#include "text_encoder.h"

typedef ModelObject TextEncoderObject; /* model: TeModel */

static PyObject *te_config_dict(const TeConfig *c) {
    return Py_BuildValue("{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:O,s:d,s:d,s:s}", "model_type", "qwen3", "vocab_size",
                         c->vocab_size, "hidden_size", c->hidden_size, "intermediate_size", c->intermediate_size,
                         "num_hidden_layers", c->n_layers, "num_attention_heads", c->n_heads, "num_key_value_heads",
                         c->n_kv_heads, "head_dim", c->head_dim, "attention_bias",
                         c->attention_bias ? Py_True : Py_False, "rms_norm_eps", c->rms_norm_eps, "rope_theta",
                         c->rope_theta, "hidden_act", "silu");
}

static PyObject *py_text_encoder_weight_manifest(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"config_json", "prefix", NULL};
    PyObject *path_bytes = NULL, *list = NULL;
    const char *prefix = "model.";
    TeConfig cfg;
    TeWeights w = {0};
    ZiWeightList wl = {0};
    zi_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|s", kwlist, PyUnicode_FSConverter, &path_bytes, &prefix)) return NULL;
    st = te_config_load(&cfg, PyBytes_AS_STRING(path_bytes));
    Py_DECREF(path_bytes);
    if (st == ZI_OK) st = te_weight_list(&cfg, &w, &wl);
    if (st != ZI_OK) { zi_raise(module, st); goto done; }
    list = PyList_New(wl.n);
    if (!list) goto done;
    for (int i = 0; i < wl.n; i++) {
        PyObject *name = PyUnicode_FromFormat("%s%s", prefix, wl.specs[i].name);
        PyObject *item = name ? Py_BuildValue("(NN)", name, shape_tuple(wl.specs[i].ndim, wl.specs[i].shape)) : NULL;
        if (!item) { Py_CLEAR(list); goto done; }
        PyList_SET_ITEM(list, i, item);
    }
done:
    te_weights_free_arrays(&w);
    zi_weights_list_free(&wl);
    return list;
}

static PyObject *TextEncoder_encode(TextEncoderObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"input_ids", "layer", NULL};
    PyObject *ids_obj;
    int layer = -2;
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "TextEncoder not initialised"); return NULL; }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i", kwlist, &ids_obj, &layer)) return NULL;
    /* integer ids only: a safe cast to int64 (no FORCECAST), so floats raise TypeError */
    PyArrayObject *ids = (PyArrayObject *)PyArray_FROMANY(ids_obj, NPY_INT64, 0, 0, NPY_ARRAY_IN_ARRAY), *out = NULL;
    if (!ids) return NULL;
    if (PyArray_NDIM(ids) != 1) {
        PyErr_Format(PyExc_ValueError, "input_ids must be one sequence of shape (L,), got %d dimensions", PyArray_NDIM(ids));
        goto fail;
    }
    npy_intp S = PyArray_DIM(ids, 0);
    if (S > INT32_MAX) { PyErr_SetString(PyExc_ValueError, "input_ids too long"); goto fail; }
    npy_intp dims[2] = {S, te_config(self->model)->hidden_size};
    out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) goto fail;
    zi_status st;
    ACQUIRE_LOCK(self->lock);
    Py_BEGIN_ALLOW_THREADS
    st = te_encode(self->model, PyArray_DATA(out), PyArray_DATA(ids), (int)S, layer);
    Py_END_ALLOW_THREADS
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }
    Py_DECREF(ids);
    return (PyObject *)out;
fail:
    Py_XDECREF(ids);
    Py_XDECREF(out);
    return NULL;
}

MODEL_KIND(te, TeModel, "TextEncoder", te_config_dict);

static PyObject *TextEncoder_new(PyTypeObject *type, PyObject *args, PyObject *kw) { return model_new(type, &te_kind); }

static zi_status te_offload_fn(void *m, int device) { return te_enable_offload(m, device); }
static PyObject *TextEncoder_enable_offload(TextEncoderObject *self, PyObject *arg) {
    return model_device_call(self, arg, te_offload_fn);
}

static PyObject *TextEncoder_get_offloaded(TextEncoderObject *self, void *closure) {
    return model_ready(self) ? PyBool_FromLong(te_offloaded(self->model)) : NULL;
}

static PyObject *TextEncoder_limit_layers(TextEncoderObject *self, PyObject *arg) {
    int layer = PyLong_AsLong(arg);
    if (layer == -1 && PyErr_Occurred()) return NULL;
    if (!model_ready(self)) return NULL;
    zi_status st;
    ACQUIRE_LOCK(self->lock);
    st = te_limit_layers(self->model, layer);
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) return zi_raise(self->module, st);
    Py_RETURN_NONE;
}

static PyGetSetDef TextEncoder_getset[] = {
    {"config", (getter)Model_get_config, NULL, "the parsed config.json values", NULL},
    {"device", (getter)Model_get_device, NULL, "-1 for the CPU, else the CUDA ordinal (where it runs)", NULL},
    {"offloaded", (getter)TextEncoder_get_offloaded, NULL, "the layers live in host memory and stream to the device", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef TextEncoder_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))TextEncoder_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(input_ids, layer=-2) -> float32 (L, hidden_size): hidden_states[layer] of one unpadded sequence"},
    {"to", (PyCFunction)Model_to, METH_O, "to(device: int): move the weights (-1 = CPU, N = cuda:N); resident there"},
    {"enable_offload", (PyCFunction)TextEncoder_enable_offload, METH_O,
     "enable_offload(device: int): run on device with the layers in (page-locked) host memory, streamed layer by "
     "layer during each encode; to(device) makes it resident again"},
    {"limit_layers", (PyCFunction)TextEncoder_limit_layers, METH_O,
     "limit_layers(layer: int): hold weights only for hidden_states up to layer (-2: not the last layer nor the "
     "final norm), from the next load on; an encode asking for more loads them all"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot TextEncoder_slots[] = {
    {Py_tp_new, TextEncoder_new},
    {Py_tp_init, Model_init},
    {Py_tp_dealloc, Model_dealloc},
    {Py_tp_methods, TextEncoder_methods},
    {Py_tp_getset, TextEncoder_getset},
    {Py_tp_doc, "TextEncoder(path, device=-1): the Qwen3 text encoder loaded from a transformers text_encoder/ folder"},
    {0, NULL},
};

static PyType_Spec TextEncoder_spec = {
    .name = "zimage._zimage.TextEncoder",
    .basicsize = sizeof(ModelObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = TextEncoder_slots,
};

static PyMethodDef te_module_functions[] = {
    {"text_encoder_weight_manifest", (PyCFunction)(void (*)(void))py_text_encoder_weight_manifest,
     METH_VARARGS | METH_KEYWORDS,
     "text_encoder_weight_manifest(config_json, prefix='model.') -> [(name, shape)] the text encoder loader expects"},
    {NULL, NULL, 0, NULL},
};
/* ==== text encoder (end) ==== */

/* ==== vae (begin) ==== */
/* In Python terms:
 *     def vae_weight_manifest(config_json) -> list[tuple[str, tuple]]   # decoder names/shapes expected
 *     def postprocess_uint8(img: f32[B,C,H,W], bf16=False) -> uint8[B,H,W,C]
 *     class Vae:                                       # the decoder of a loaded AutoencoderKL
 *         def __init__(self, path: str, device: int = -1): ...
 *         def decode(self, z: f32[B,L,h,w]) -> f32[B,Co,f*h,f*w]     # f = up_factor
 *         def to(self, device: int) -> None                   # resident on device
 *         def enable_offload(self, device: int) -> None       # weights in host memory, visiting per decode
 *         def enable_tiling(self, tile_sample_min_size=None, tile_latent_min_size=None, tile_overlap_factor=None)
 *         def disable_tiling(self) -> None
 *         def activation_bytes(self, h: int, w: int, act_size: int) -> int   # of a first decode of h x w
 *         config: dict; device: int; up_factor: int; offloaded: bool
 *         tiling: dict(use_tiling, tile_sample_min_size, tile_latent_min_size, tile_overlap_factor)
 */
#include "vae.h"

static PyObject *py_vae_weight_manifest(PyObject *module, PyObject *arg) {
    PyObject *path_bytes = NULL, *list = NULL;
    VaeConfig cfg;
    VaeWeights w = {0};
    ZiWeightList wl = {0};
    zi_status st;
    if (!PyUnicode_FSConverter(arg, &path_bytes)) return NULL;
    st = vae_config_load(&cfg, PyBytes_AS_STRING(path_bytes));
    Py_DECREF(path_bytes);
    if (st == ZI_OK) st = vae_weight_list(&cfg, &w, &wl, NULL);
    if (st != ZI_OK) { zi_raise(module, st); goto done; }
    list = PyList_New(wl.n);
    if (!list) goto done;
    for (int i = 0; i < wl.n; i++) {
        PyObject *item = Py_BuildValue("(sN)", wl.specs[i].name, shape_tuple(wl.specs[i].ndim, wl.specs[i].shape));
        if (!item) { Py_CLEAR(list); goto done; }
        PyList_SET_ITEM(list, i, item);
    }
done:
    vae_weights_arrays_free(&w);
    zi_weights_list_free(&wl);
    return list;
}

static PyObject *py_postprocess_uint8(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"img", "bf16", NULL};
    PyObject *img_obj;
    int bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &img_obj, &bf16)) return NULL;
    PyArrayObject *img = as_f32(img_obj, 4, "image (B, C, H, W)");
    if (!img) return NULL;
    npy_intp *d = PyArray_DIMS(img);
    if (d[0] > INT32_MAX || d[1] > INT32_MAX || d[2] > INT32_MAX || d[3] > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "image too large");
        Py_DECREF(img);
        return NULL;
    }
    npy_intp od[4] = {d[0], d[2], d[3], d[1]};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(4, od, NPY_UINT8);
    if (!out) { Py_DECREF(img); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    vae_postprocess_uint8(PyArray_DATA(out), PyArray_DATA(img), (int)d[0], (int)d[1], (int)d[2], (int)d[3], bf16);
    Py_END_ALLOW_THREADS
    Py_DECREF(img);
    return (PyObject *)out;
}

static PyMethodDef vae_functions[] = {
    {"vae_weight_manifest", py_vae_weight_manifest, METH_O,
     "vae_weight_manifest(config_json) -> [(name, shape)] the VAE decoder loader expects"},
    {"postprocess_uint8", (PyCFunction)(void (*)(void))py_postprocess_uint8, METH_VARARGS | METH_KEYWORDS,
     "postprocess_uint8(img f32 (B, C, H, W), bf16=False) -> uint8 (B, H, W, C): "
     "round_half_even(clamp(img * 0.5 + 0.5, 0, 1) * 255), as VaeImageProcessor.postprocess(..., 'pil')"},
    {NULL, NULL, 0, NULL},
};

typedef ModelObject VaeObject; /* model: VaeModel */

/* one key of the config dict; steals v */
static int vae_set(PyObject *d, const char *key, PyObject *v) {
    if (!v) return -1;
    int rc = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *vae_config_dict(const VaeConfig *c) {
    PyObject *d = PyDict_New(), *boc = NULL, *ubt = NULL;
    if (!d) return NULL;
    boc = PyList_New(c->n_blocks);
    ubt = PyList_New(c->n_blocks);
    if (!boc || !ubt) goto fail;
    for (int i = 0; i < c->n_blocks; i++) {
        PyObject *v = PyLong_FromLong(c->block_out_channels[i]), *s = PyUnicode_FromString("UpDecoderBlock2D");
        if (!v || !s) { Py_XDECREF(v); Py_XDECREF(s); goto fail; }
        PyList_SET_ITEM(boc, i, v);
        PyList_SET_ITEM(ubt, i, s);
    }
    if (vae_set(d, "in_channels", PyLong_FromLong(c->in_channels)) < 0 ||
        vae_set(d, "out_channels", PyLong_FromLong(c->out_channels)) < 0 ||
        vae_set(d, "latent_channels", PyLong_FromLong(c->latent_channels)) < 0 ||
        vae_set(d, "block_out_channels", Py_NewRef(boc)) < 0 ||
        vae_set(d, "up_block_types", Py_NewRef(ubt)) < 0 ||
        vae_set(d, "layers_per_block", PyLong_FromLong(c->layers_per_block)) < 0 ||
        vae_set(d, "norm_num_groups", PyLong_FromLong(c->norm_num_groups)) < 0 ||
        vae_set(d, "act_fn", PyUnicode_FromString("silu")) < 0 ||
        vae_set(d, "mid_block_add_attention", PyBool_FromLong(c->mid_attention)) < 0 ||
        vae_set(d, "use_post_quant_conv", PyBool_FromLong(c->post_quant_conv)) < 0 ||
        vae_set(d, "use_quant_conv", PyBool_FromLong(c->use_quant_conv)) < 0 ||
        vae_set(d, "force_upcast", PyBool_FromLong(c->force_upcast)) < 0 ||
        vae_set(d, "sample_size", PyLong_FromLong(c->sample_size)) < 0 ||
        vae_set(d, "scaling_factor", PyFloat_FromDouble(c->scaling_factor)) < 0 ||
        vae_set(d, "shift_factor", c->has_shift_factor ? PyFloat_FromDouble(c->shift_factor) : Py_NewRef(Py_None)) < 0)
        goto fail;
    Py_DECREF(boc);
    Py_DECREF(ubt);
    return d;
fail:
    Py_XDECREF(boc);
    Py_XDECREF(ubt);
    Py_DECREF(d);
    return NULL;
}

static PyObject *Vae_decode(VaeObject *self, PyObject *arg) {
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Vae not initialised"); return NULL; }
    PyArrayObject *z = as_f32(arg, 4, "latents z (B, latent_channels, h, w)"), *out = NULL;
    if (!z) return NULL;
    const VaeConfig *c = vae_config(self->model);
    npy_intp *zs = PyArray_DIMS(z);
    int64_t f = vae_up_factor(self->model);
    if (zs[1] != c->latent_channels) {
        PyErr_Format(PyExc_ValueError, "latents have %ld channels, the VAE has latent_channels=%d", (long)zs[1],
                     c->latent_channels);
        goto fail;
    }
    if (zs[2] <= 0 || zs[3] <= 0) {
        PyErr_Format(PyExc_ValueError, "latents of spatial size %ldx%ld are empty", (long)zs[2], (long)zs[3]);
        goto fail;
    }
    if (zs[0] > INT32_MAX || zs[2] * f > INT32_MAX || zs[3] * f > INT32_MAX ||
        (int64_t)zs[2] * f * (int64_t)zs[3] * f > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "latents too large");
        goto fail;
    }
    npy_intp od[4] = {zs[0], c->out_channels, (npy_intp)(zs[2] * f), (npy_intp)(zs[3] * f)};
    out = (PyArrayObject *)PyArray_SimpleNew(4, od, NPY_FLOAT32);
    if (!out) goto fail;
    if (zs[0] > 0) {
        zi_status st;
        ACQUIRE_LOCK(self->lock);
        Py_BEGIN_ALLOW_THREADS
        st = vae_decode(self->model, PyArray_DATA(out), PyArray_DATA(z), (int)zs[0], (int)zs[2], (int)zs[3]);
        Py_END_ALLOW_THREADS
        RELEASE_LOCK(self->lock);
        if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }
    }
    Py_DECREF(z);
    return (PyObject *)out;
fail:
    Py_XDECREF(z);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *Vae_get_up_factor(VaeObject *self, void *closure) {
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Vae not initialised"); return NULL; }
    return PyLong_FromLong(vae_up_factor(self->model));
}

/* a positive int that fits a C int, else -1 with an exception set */
static int vae_tile_int(PyObject *o, const char *name) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v <= 0 || v > INT_MAX) { PyErr_Format(PyExc_ValueError, "%s must be a positive int, got %ld", name, v); return -1; }
    return (int)v;
}

/* enable (1) or disable (0) tiling; sizes / overlap None keep the current values */
static PyObject *vae_tiling_set(VaeObject *self, int enable, PyObject *ts, PyObject *tl, PyObject *ov) {
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Vae not initialised"); return NULL; }
    VaeTiling t = {.enabled = enable, .tile_sample = -1, .tile_latent = -1, .overlap = -1.0};
    if (ts != Py_None && (t.tile_sample = vae_tile_int(ts, "tile_sample_min_size")) < 0) return NULL;
    if (tl != Py_None && (t.tile_latent = vae_tile_int(tl, "tile_latent_min_size")) < 0) return NULL;
    if (ov != Py_None && (t.overlap = PyFloat_AsDouble(ov)) == -1.0 && PyErr_Occurred()) return NULL;
    if (ov != Py_None && !(t.overlap >= 0 && t.overlap < 1)) {
        PyErr_Format(PyExc_ValueError, "tile_overlap_factor must be in [0, 1), got %R", ov); /* PyErr_Format has no %g */
        return NULL;
    }
    zi_status st;
    ACQUIRE_LOCK(self->lock);
    st = vae_set_tiling(self->model, &t);
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) return zi_raise(self->module, st);
    Py_RETURN_NONE;
}

static PyObject *Vae_enable_tiling(VaeObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor", NULL};
    PyObject *ts = Py_None, *tl = Py_None, *ov = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOO", kwlist, &ts, &tl, &ov)) return NULL;
    return vae_tiling_set(self, 1, ts, tl, ov);
}

static PyObject *Vae_disable_tiling(VaeObject *self, PyObject *unused) {
    return vae_tiling_set(self, 0, Py_None, Py_None, Py_None);
}

static PyObject *Vae_activation_bytes(VaeObject *self, PyObject *args) {
    int h, w, es;
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Vae not initialised"); return NULL; }
    if (!PyArg_ParseTuple(args, "iii", &h, &w, &es)) return NULL;
    if (h <= 0 || w <= 0 || es <= 0) { PyErr_SetString(PyExc_ValueError, "h, w and act_size must be positive"); return NULL; }
    return PyLong_FromSize_t(vae_acts_bytes(self->model, h, w, (size_t)es));
}

static PyObject *Vae_get_tiling(VaeObject *self, void *closure) {
    if (!self->model) { PyErr_SetString(PyExc_RuntimeError, "Vae not initialised"); return NULL; }
    VaeTiling t = vae_get_tiling(self->model);
    return Py_BuildValue("{s:N,s:i,s:i,s:d}", "use_tiling", PyBool_FromLong(t.enabled), "tile_sample_min_size",
                         t.tile_sample, "tile_latent_min_size", t.tile_latent, "tile_overlap_factor", t.overlap);
}

MODEL_KIND(vae, VaeModel, "Vae", vae_config_dict);

static PyObject *Vae_new(PyTypeObject *type, PyObject *args, PyObject *kw) { return model_new(type, &vae_kind); }

static zi_status vae_offload_fn(void *m, int device) { return vae_enable_offload(m, device); }
static PyObject *Vae_enable_offload(VaeObject *self, PyObject *arg) { return model_device_call(self, arg, vae_offload_fn); }

static PyObject *Vae_get_offloaded(VaeObject *self, void *closure) {
    return model_ready(self) ? PyBool_FromLong(vae_offloaded(self->model)) : NULL;
}

static PyMethodDef Vae_methods[] = {
    {"decode", (PyCFunction)Vae_decode, METH_O,
     "decode(z f32 (B, latent_channels, h, w)) -> f32 (B, out_channels, f*h, f*w): Decoder.forward per sample"},
    {"to", (PyCFunction)Model_to, METH_O, "to(device: int): move the weights (-1 = CPU, N = cuda:N); resident there"},
    {"enable_offload", (PyCFunction)Vae_enable_offload, METH_O,
     "enable_offload(device: int): decode on device with the weights in (page-locked) host memory, copied to the "
     "device for each decode call and freed after it with the activations; to(device) makes it resident again"},
    {"enable_tiling", (PyCFunction)(void (*)(void))Vae_enable_tiling, METH_VARARGS | METH_KEYWORDS,
     "enable_tiling(tile_sample_min_size=None, tile_latent_min_size=None, tile_overlap_factor=None): decode latents "
     "larger than tile_latent_min_size in overlapping tiles (AutoencoderKL.tiled_decode); None keeps a value"},
    {"disable_tiling", (PyCFunction)Vae_disable_tiling, METH_NOARGS, "disable_tiling(): decode in one pass"},
    {"activation_bytes", (PyCFunction)Vae_activation_bytes, METH_VARARGS,
     "activation_bytes(h, w, act_size) -> bytes of the activation buffer a first decode of an h x w latent "
     "allocates with the current tiling, for act_size-byte elements (4 on the CPU, 2 on CUDA)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Vae_getset[] = {
    {"tiling", (getter)Vae_get_tiling, NULL, "dict(use_tiling, tile_sample_min_size, tile_latent_min_size, "
     "tile_overlap_factor)", NULL},
    {"config", (getter)Model_get_config, NULL, "the parsed config.json values (diffusers defaults filled in)", NULL},
    {"device", (getter)Model_get_device, NULL, "-1 for the CPU, else the CUDA ordinal", NULL},
    {"up_factor", (getter)Vae_get_up_factor, NULL, "output size / latent size = 2**(len(block_out_channels)-1)", NULL},
    {"offloaded", (getter)Vae_get_offloaded, NULL, "the weights live in host memory and visit the device per decode", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Vae_slots[] = {
    {Py_tp_new, Vae_new},
    {Py_tp_init, Model_init},
    {Py_tp_dealloc, Model_dealloc},
    {Py_tp_methods, Vae_methods},
    {Py_tp_getset, Vae_getset},
    {Py_tp_doc, "Vae(path, device=-1): the AutoencoderKL decoder loaded from a diffusers vae/ folder"},
    {0, NULL},
};

static PyType_Spec Vae_spec = {
    .name = "zimage._zimage.Vae",
    .basicsize = sizeof(ModelObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Vae_slots,
};
/* ==== vae (end) ==== */

/* ==== pipeline (begin) ==== */
/* ZImagePipeline: a C type holding the five components (Python objects of this package) and
   running __call__'s denoising loop in C with the GIL released. Argument handling follows
   diffusers' ZImagePipeline.__call__; see zimage/_pipeline_support.py for the small Python
   helpers it calls (hub resolution, initial noise from a generator, progress bar, output). */
#include "pipeline.h"
#include "png.h"

typedef struct {
    PyObject_HEAD
    PyObject *transformer, *text_encoder, *tokenizer, *vae, *scheduler;
    PyObject *progress_config;      /* dict given to set_progress_bar_config */
    int offload_gpu_id;             /* the GPU of the last enable_model_cpu_offload (diffusers' _offload_gpu_id) */
    PyThread_type_lock lock;
    PyObject *module;
} PipelineObject;

/* Call zimage._pipeline_support.<fn>(*args, **kw). Steals `args` (a new tuple, or NULL when
   building it failed, which then propagates); the helper module is imported lazily (it imports
   zimage, which imports us). */
static PyObject *support_call(const char *fn, PyObject *args, PyObject *kw) {
    PyObject *mod = NULL, *f = NULL, *r = NULL;
    if (!args) return NULL;
    mod = PyImport_ImportModule("zimage._pipeline_support");
    if (mod) f = PyObject_GetAttrString(mod, fn);
    if (f) r = PyObject_Call(f, args, kw);
    Py_XDECREF(f);
    Py_XDECREF(mod);
    Py_DECREF(args);
    return r;
}

/* The C object behind a component (`obj._core`), checked against our type. */
static void *component_core(PyObject *obj, PyTypeObject *type, const char *what) {
    if (!obj || obj == Py_None) { PyErr_Format(PyExc_ValueError, "the pipeline has no %s", what); return NULL; }
    PyObject *core = PyObject_GetAttrString(obj, "_core");
    if (!core) return NULL;
    int ok = PyObject_TypeCheck(core, type);
    Py_DECREF(core); /* the component keeps it alive */
    if (!ok) { PyErr_Format(PyExc_TypeError, "pipeline %s is not a zimage component", what); return NULL; }
    return core;
}

typedef struct {
    PipelineObject *self;
    PyObject *callback;             /* callback_on_step_end or NULL                */
    PyObject *tensor_inputs;        /* names the callback may read and replace      */
    PyObject *bar;                  /* progress bar or None                         */
    PyObject *prompt_embeds;        /* list of arrays (kept alive)                  */
    int B, C, h, w, Cc;
    float **caps;                   /* may be replaced by the callback              */
    int *cap_lens;
    const ZiSchedule *sched;
} StepContext;

/* After each step, with the GIL: Ctrl-C check, progress, callback_on_step_end. latents (host,
   downloaded by the loop) is non-NULL whenever a callback is set. */
static zi_status pipeline_step_hook(void *vctx, int step, float timestep, float *latents, size_t n, unsigned *changed) {
    StepContext *c = vctx;
    zi_status st = ZI_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    if (PyErr_CheckSignals() < 0) { st = zi_fail(ZI_ERR_INTERRUPTED, "interrupted after step %d", step + 1); goto done; }
    if (c->bar != Py_None) {
        PyObject *r = PyObject_CallMethod(c->bar, "update", NULL);
        if (!r) { st = zi_fail(ZI_ERR_INTERRUPTED, "progress bar failed"); goto done; }
        Py_DECREF(r);
    }
    if (c->callback) {
        npy_intp dims[4] = {c->B, c->C, c->h, c->w};
        PyObject *lat = PyArray_SimpleNew(4, dims, NPY_FLOAT32), *kw = PyDict_New(), *r = NULL;
        if (!lat || !kw) goto cb_fail;
        memcpy(PyArray_DATA((PyArrayObject *)lat), latents, n * sizeof(float));
        Py_ssize_t ni = PySequence_Size(c->tensor_inputs);
        for (Py_ssize_t i = 0; i < ni; i++) {
            PyObject *name = PySequence_GetItem(c->tensor_inputs, i);
            if (!name) goto cb_fail;
            int rc = 0;
            if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "latents") == 0)
                rc = PyDict_SetItem(kw, name, lat);
            else if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "prompt_embeds") == 0)
                rc = PyDict_SetItem(kw, name, c->prompt_embeds);
            Py_DECREF(name);
            if (rc < 0) goto cb_fail;
        }
        r = PyObject_CallFunction(c->callback, "OifO", (PyObject *)c->self, step, (double)timestep, kw);
        if (!r) goto cb_fail;
        if (r != Py_None && PyDict_Check(r)) {
            PyObject *nl = PyDict_GetItemString(r, "latents");
            if (nl) {
                PyArrayObject *a = as_f32(nl, 4, "latents returned by callback_on_step_end");
                if (!a) goto cb_fail;
                npy_intp *d = PyArray_DIMS(a);
                if (d[0] != c->B || d[1] != c->C || d[2] != c->h || d[3] != c->w) {
                    Py_DECREF(a);
                    PyErr_SetString(PyExc_ValueError, "callback_on_step_end returned latents of another shape");
                    goto cb_fail;
                }
                memcpy(latents, PyArray_DATA(a), n * sizeof(float));
                *changed |= ZI_HOOK_LATENTS;
                Py_DECREF(a);
            }
            PyObject *pe = PyDict_GetItemString(r, "prompt_embeds");
            if (pe && pe != c->prompt_embeds) {
                if (!PyList_Check(pe) || PyList_GET_SIZE(pe) != c->B) {
                    PyErr_SetString(PyExc_ValueError, "callback_on_step_end must return prompt_embeds as a list of one array per sample");
                    goto cb_fail;
                }
                PyObject *conv = PyList_New(c->B);
                if (!conv) goto cb_fail;
                for (int b = 0; b < c->B; b++) {
                    PyArrayObject *a = as_f32(PyList_GET_ITEM(pe, b), 2, "prompt_embeds[i]");
                    if (!a) { Py_DECREF(conv); goto cb_fail; }
                    PyList_SET_ITEM(conv, b, (PyObject *)a);
                    if (PyArray_DIM(a, 0) < 1 || PyArray_DIM(a, 0) > INT32_MAX || PyArray_DIM(a, 1) != c->Cc) {
                        PyErr_Format(PyExc_ValueError, "prompt_embeds[%d] returned by callback_on_step_end has shape "
                                     "(%ld, %ld); (L >= 1, %d) expected", b, (long)PyArray_DIM(a, 0),
                                     (long)PyArray_DIM(a, 1), c->Cc);
                        Py_DECREF(conv);
                        goto cb_fail;
                    }
                }
                for (int b = 0; b < c->B; b++) {
                    PyArrayObject *a = (PyArrayObject *)PyList_GET_ITEM(conv, b);
                    c->caps[b] = PyArray_DATA(a);
                    c->cap_lens[b] = (int)PyArray_DIM(a, 0);
                }
                Py_SETREF(c->prompt_embeds, conv);
                *changed |= ZI_HOOK_CAPTIONS;
            }
        }
        Py_XDECREF(r);
        Py_DECREF(lat);
        Py_DECREF(kw);
        goto done;
    cb_fail:
        Py_XDECREF(r);
        Py_XDECREF(lat);
        Py_XDECREF(kw);
        st = zi_fail(ZI_ERR_INTERRUPTED, "callback_on_step_end raised");
    }
done:
    PyGILState_Release(g);
    return st;
}

/* UTF-8 of a prompt; a string that cannot be encoded (lone surrogate) is a ValueError */
static const char *prompt_utf8(PyObject *s, Py_ssize_t *len) {
    if (!PyUnicode_Check(s)) { PyErr_SetString(PyExc_TypeError, "prompts must be str"); return NULL; }
    const char *u = PyUnicode_AsUTF8AndSize(s, len);
    if (!u && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "the prompt is not valid text: it cannot be encoded as UTF-8 (lone surrogate?)");
    }
    return u;
}

/* prompts (list of str) -> list of float32 (L_i, Cc) arrays: tokenizer, then the text encoder */
static PyObject *encode_prompts(PipelineObject *self, PyObject *prompts, int max_len) {
    ModuleState *ms = get_state(self->module);
    TextEncoderObject *te = component_core(self->text_encoder, ms->TextEncoderType, "text_encoder");
    if (!te) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(prompts);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        if (!prompt_utf8(PyList_GET_ITEM(prompts, i), &len)) goto fail;
        PyObject *ids = PyObject_CallMethod(self->tokenizer, "encode_prompt", "Oi", PyList_GET_ITEM(prompts, i), max_len);
        if (!ids) goto fail;
        PyArrayObject *ida = (PyArrayObject *)PyArray_FROMANY(ids, NPY_INT32, 1, 1, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        Py_DECREF(ids);
        if (!ida) goto fail;
        float *emb = NULL;
        size_t L = (size_t)PyArray_DIM(ida, 0);
        zi_status st;
        ACQUIRE_LOCK(te->lock);
        Py_BEGIN_ALLOW_THREADS
        st = zi_pipeline_encode_ids(te->model, PyArray_DATA(ida), L, &emb);
        Py_END_ALLOW_THREADS
        RELEASE_LOCK(te->lock);
        Py_DECREF(ida);
        if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }
        npy_intp dims[2] = {(npy_intp)L, te_config(te->model)->hidden_size};
        PyObject *arr = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (!arr) { free(emb); goto fail; }
        memcpy(PyArray_DATA((PyArrayObject *)arr), emb, L * (size_t)dims[1] * sizeof(float));
        free(emb);
        PyList_SET_ITEM(out, i, arr);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* str | list[str] -> new list of str, or NULL (+ exception) */
static PyObject *as_prompt_list(PyObject *p, const char *what) {
    if (PyUnicode_Check(p)) return Py_BuildValue("[O]", p);
    if (!PyList_Check(p) && !PyTuple_Check(p)) { PyErr_Format(PyExc_TypeError, "%s must be a str or a list of str", what); return NULL; }
    PyObject *l = PySequence_List(p);
    if (!l) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++)
        if (!PyUnicode_Check(PyList_GET_ITEM(l, i))) {
            Py_DECREF(l);
            PyErr_Format(PyExc_TypeError, "%s must be a str or a list of str", what);
            return NULL;
        }
    return l;
}

/* list of arrays (or one 2-D / 3-D array) -> new list of float32 (L_i, Cc) arrays */
static PyObject *as_embeds_list(PyObject *e, int Cc, const char *what) {
    PyObject *seq = PySequence_List(e);
    if (!seq) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(seq); i++) {
        PyArrayObject *a = as_f32(PyList_GET_ITEM(seq, i), 2, what);
        if (!a) { Py_DECREF(seq); return NULL; }
        if (PyArray_DIM(a, 1) != Cc || PyArray_DIM(a, 0) < 1) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] has shape (%ld, %ld); (L >= 1, %d) expected", what, i,
                         (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1), Cc);
            Py_DECREF(a);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SetItem(seq, i, (PyObject *)a);
    }
    return seq;
}

/* [e0, e1] -> [e0 x n, e1 x n] (num_images_per_prompt) */
static PyObject *repeat_each(PyObject *list, int n) {
    Py_ssize_t m = PyList_GET_SIZE(list);
    PyObject *out = PyList_New(m * n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            PyObject *x = PyList_GET_ITEM(list, i);
            Py_INCREF(x);
            PyList_SET_ITEM(out, i * n + j, x);
        }
    return out;
}

static int parse_int_or_none(PyObject *o, int dflt, int *out, const char *what) {
    if (!o || o == Py_None) { *out = dflt; return 0; }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v <= 0 || v > (1 << 20)) { PyErr_Format(PyExc_ValueError, "%s must be a positive integer, got %ld", what, v); return -1; }
    *out = (int)v;
    return 0;
}

static PyObject *Pipeline_call(PipelineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prompt", "height", "width", "num_inference_steps", "sigmas", "guidance_scale",
                             "cfg_normalization", "cfg_truncation", "negative_prompt", "num_images_per_prompt",
                             "generator", "latents", "prompt_embeds", "negative_prompt_embeds", "output_type",
                             "return_dict", "joint_attention_kwargs", "callback_on_step_end",
                             "callback_on_step_end_tensor_inputs", "max_sequence_length", NULL};
    PyObject *prompt = Py_None, *height_o = Py_None, *width_o = Py_None, *steps_o = Py_None, *sigmas_o = Py_None;
    PyObject *negative = Py_None, *nipp_o = Py_None, *generator = Py_None, *latents_o = Py_None;
    PyObject *pe_o = Py_None, *npe_o = Py_None, *output_type = Py_None, *jak = Py_None, *callback = Py_None;
    PyObject *tensor_inputs = Py_None, *cfg_norm_o = Py_False;
    double guidance = 5.0, cfg_trunc = 1.0;
    int return_dict = 1, max_len = 512;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOOOOdOdOOOOOOOpOOOi", kwlist, &prompt, &height_o, &width_o, &steps_o,
                                     &sigmas_o, &guidance, &cfg_norm_o, &cfg_trunc, &negative, &nipp_o, &generator,
                                     &latents_o, &pe_o, &npe_o, &output_type, &return_dict, &jak, &callback,
                                     &tensor_inputs, &max_len))
        return NULL;
    ModuleState *ms = get_state(self->module);
    PyObject *prompts = NULL, *pos = NULL, *neg = NULL, *lat = NULL, *bar = NULL, *result = NULL, *sched_sig = NULL;
    PyObject *img_arr = NULL, *tmp = NULL;
    float **caps = NULL, **neg_caps = NULL;
    int *cap_lens = NULL, *neg_lens = NULL;
    ZiLatents dlat = {0};             /* the latents on the transformer's backend */
    ZiSchedule sched = {0};
    StepContext sc = {0};
    int locked = 0;

    TransformerObject *tr = component_core(self->transformer, ms->TransformerType, "transformer");
    VaeObject *vae = component_core(self->vae, ms->VaeType, "vae");
    if (!tr || !vae) return NULL;
    const DitConfig *dc = dit_config(tr->model);
    int C = dc->in_channels, Cc = dc->cap_feat_dim;
    int up = vae_up_factor(vae->model), vae_scale = up * 2;
    int H, W, steps, nipp;
    if (parse_int_or_none(height_o, 1024, &H, "height") < 0 || parse_int_or_none(width_o, 1024, &W, "width") < 0 ||
        parse_int_or_none(steps_o, 50, &steps, "num_inference_steps") < 0 ||
        parse_int_or_none(nipp_o, 1, &nipp, "num_images_per_prompt") < 0)
        return NULL;
    if (H % vae_scale) return PyErr_Format(PyExc_ValueError, "Height must be divisible by %d (got %d). Please adjust the height to a multiple of %d.", vae_scale, H, vae_scale);
    if (W % vae_scale) return PyErr_Format(PyExc_ValueError, "Width must be divisible by %d (got %d). Please adjust the width to a multiple of %d.", vae_scale, W, vae_scale);
    if (max_len < 1) return PyErr_Format(PyExc_ValueError, "max_sequence_length must be >= 1, got %d", max_len);
    float cfg_norm;
    if (PyBool_Check(cfg_norm_o) || cfg_norm_o == Py_None) cfg_norm = cfg_norm_o == Py_True ? 1.0f : 0.0f;
    else {
        double v = PyFloat_AsDouble(cfg_norm_o);
        if (v == -1.0 && PyErr_Occurred()) return NULL;
        cfg_norm = (float)v;
    }
    const char *otype = "default";
    if (output_type != Py_None) {
        if (!PyUnicode_Check(output_type)) return PyErr_Format(PyExc_TypeError, "output_type must be a str");
        otype = PyUnicode_AsUTF8(output_type);
        if (strcmp(otype, "pil") && strcmp(otype, "np") && strcmp(otype, "latent") && strcmp(otype, "pt"))
            return PyErr_Format(PyExc_ValueError, "output_type must be 'pil', 'np', 'pt' or 'latent', got %R", output_type);
    }
    if (callback != Py_None && !PyCallable_Check(callback)) return PyErr_Format(PyExc_TypeError, "callback_on_step_end must be callable");
    if (tensor_inputs == Py_None) tensor_inputs = NULL;
    else {
        for (Py_ssize_t i = 0, n = PySequence_Size(tensor_inputs); i < n; i++) {
            PyObject *name = PySequence_GetItem(tensor_inputs, i);
            if (!name) return NULL;
            int ok = PyUnicode_Check(name) && (PyUnicode_CompareWithASCIIString(name, "latents") == 0 ||
                                              PyUnicode_CompareWithASCIIString(name, "prompt_embeds") == 0);
            Py_DECREF(name);
            if (!ok) return PyErr_Format(PyExc_ValueError, "callback_on_step_end_tensor_inputs may hold 'latents' and 'prompt_embeds'");
        }
    }
    int do_cfg = guidance > 0.0;

    ACQUIRE_LOCK(self->lock);
    locked = 1;
    /* prompts -> caption features */
    if (prompt != Py_None) {
        if (!(prompts = as_prompt_list(prompt, "prompt"))) goto fail;
        if (PyList_GET_SIZE(prompts) == 0) { PyErr_SetString(PyExc_ValueError, "prompt is an empty list"); goto fail; }
        if (pe_o != Py_None) {
            if (!(pos = as_embeds_list(pe_o, Cc, "prompt_embeds"))) goto fail;
            if (PyList_GET_SIZE(pos) != PyList_GET_SIZE(prompts)) { PyErr_SetString(PyExc_ValueError, "prompt and prompt_embeds differ in length"); goto fail; }
        } else if (!(pos = encode_prompts(self, prompts, max_len))) goto fail;
    } else {
        if (pe_o == Py_None) { PyErr_SetString(PyExc_ValueError, "give prompt or prompt_embeds"); goto fail; }
        if (!(pos = as_embeds_list(pe_o, Cc, "prompt_embeds"))) goto fail;
        if (PyList_GET_SIZE(pos) == 0) { PyErr_SetString(PyExc_ValueError, "prompt_embeds is empty"); goto fail; }
        if (do_cfg && npe_o == Py_None) {
            PyErr_SetString(PyExc_ValueError, "When `prompt_embeds` is provided without `prompt`, `negative_prompt_embeds` must also be provided for classifier-free guidance.");
            goto fail;
        }
    }
    Py_ssize_t nprompts = PyList_GET_SIZE(pos);
    if (do_cfg) {
        if (npe_o != Py_None) {
            if (!(neg = as_embeds_list(npe_o, Cc, "negative_prompt_embeds"))) goto fail;
        } else {
            PyObject *negs;
            if (negative == Py_None) {
                negs = PyList_New(nprompts);
                if (!negs) goto fail;
                for (Py_ssize_t i = 0; i < nprompts; i++) PyList_SET_ITEM(negs, i, PyUnicode_FromString(""));
            } else {
                if (!(negs = as_prompt_list(negative, "negative_prompt"))) goto fail;
                if (PyList_GET_SIZE(negs) == 1 && nprompts > 1) { /* one negative for every prompt */
                    PyObject *r = repeat_each(negs, (int)nprompts);
                    Py_SETREF(negs, r);
                    if (!negs) goto fail;
                }
            }
            neg = encode_prompts(self, negs, max_len);
            Py_DECREF(negs);
            if (!neg) goto fail;
        }
        if (PyList_GET_SIZE(neg) != nprompts) {
            PyErr_Format(PyExc_ValueError, "%zd negative prompts for %zd prompts", PyList_GET_SIZE(neg), nprompts);
            goto fail;
        }
    }
    if (nipp > 1) {
        tmp = repeat_each(pos, nipp);
        if (!tmp) goto fail;
        Py_SETREF(pos, tmp);
        tmp = NULL;
        if (neg) {
            tmp = repeat_each(neg, nipp);
            if (!tmp) goto fail;
            Py_SETREF(neg, tmp);
            tmp = NULL;
        }
    }
    int B = (int)PyList_GET_SIZE(pos);
    int h = 2 * (H / vae_scale), w = 2 * (W / vae_scale);

    /* initial latents (B, C, h, w) f32 */
    if (latents_o != Py_None) {
        PyArrayObject *a = as_f32(latents_o, 4, "latents");
        if (!a) goto fail;
        npy_intp *d = PyArray_DIMS(a);
        if (d[0] != B || d[1] != C || d[2] != h || d[3] != w) {
            PyErr_Format(PyExc_ValueError, "Unexpected latents shape, got (%ld, %ld, %ld, %ld), expected (%d, %d, %d, %d)",
                         (long)d[0], (long)d[1], (long)d[2], (long)d[3], B, C, h, w);
            Py_DECREF(a);
            goto fail;
        }
        lat = PyArray_NewCopy(a, NPY_CORDER); /* ours to update in place */
        Py_DECREF(a);
    } else {
        lat = support_call("initial_latents", Py_BuildValue("((iiii)O)", B, C, h, w, generator), NULL);
        if (lat) {
            PyArrayObject *a = as_f32(lat, 4, "initial latents");
            Py_SETREF(lat, (PyObject *)a);
        }
    }
    if (!lat) goto fail;

    /* schedule */
    if (sigmas_o != Py_None) {
        sched_sig = (PyObject *)as_f32(sigmas_o, 1, "sigmas");
        if (!sched_sig) goto fail;
        steps = (int)PyArray_DIM((PyArrayObject *)sched_sig, 0);
        if (steps < 1) { PyErr_SetString(PyExc_ValueError, "sigmas is empty"); goto fail; }
    }
    PyObject *shift_o = PyObject_CallMethod(self->scheduler, "__getattribute__", "s", "shift");
    if (!shift_o) goto fail;
    double shift = PyFloat_AsDouble(shift_o);
    Py_DECREF(shift_o);
    if (shift == -1.0 && PyErr_Occurred()) goto fail;
    zi_status st = zi_schedule_make(&sched, steps, sched_sig ? PyArray_DATA((PyArrayObject *)sched_sig) : NULL, (float)shift, 1000);
    if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }

    /* caption pointers */
    caps = calloc((size_t)B, sizeof *caps);
    cap_lens = calloc((size_t)B, sizeof *cap_lens);
    if (do_cfg) { neg_caps = calloc((size_t)B, sizeof *neg_caps); neg_lens = calloc((size_t)B, sizeof *neg_lens); }
    if (!caps || !cap_lens || (do_cfg && (!neg_caps || !neg_lens))) { PyErr_NoMemory(); goto fail; }
    for (int b = 0; b < B; b++) {
        PyArrayObject *a = (PyArrayObject *)PyList_GET_ITEM(pos, b);
        caps[b] = PyArray_DATA(a);
        cap_lens[b] = (int)PyArray_DIM(a, 0);
        if (do_cfg) {
            a = (PyArrayObject *)PyList_GET_ITEM(neg, b);
            neg_caps[b] = PyArray_DATA(a);
            neg_lens[b] = (int)PyArray_DIM(a, 0);
        }
    }

    /* the loop */
    bar = support_call("make_progress_bar", Py_BuildValue("(iO)", steps, self->progress_config), NULL);
    if (!bar) goto fail;
    sc.self = self;
    sc.callback = callback != Py_None ? callback : NULL;
    sc.tensor_inputs = tensor_inputs ? tensor_inputs : NULL;
    if (sc.callback && !sc.tensor_inputs) {
        static PyObject *dflt;
        if (!dflt) dflt = Py_BuildValue("[s]", "latents");
        sc.tensor_inputs = dflt;
    }
    sc.bar = bar;
    sc.prompt_embeds = pos;
    Py_INCREF(pos);
    sc.B = B, sc.C = C, sc.h = h, sc.w = w, sc.Cc = Cc;
    sc.caps = caps;
    sc.cap_lens = cap_lens;
    sc.sched = &sched;
    ZiDenoiseArgs da = {.caps = caps, .cap_lens = cap_lens, .neg_caps = do_cfg ? neg_caps : NULL, .neg_lens = neg_lens,
                        .guidance = (float)guidance, .cfg_normalization = cfg_norm, .cfg_truncation = (float)cfg_trunc,
                        .sched = &sched, .hook = pipeline_step_hook, .hook_ctx = &sc, .hook_latents = sc.callback != NULL};
    int decode = strcmp(otype, "latent") != 0;
    if (decode && (st = zi_pipeline_check_devices(tr->model, vae->model)) != ZI_OK) { zi_raise(self->module, st); goto fail; }
    ACQUIRE_LOCK(tr->lock);
    Py_BEGIN_ALLOW_THREADS
    ZiBackend *be = NULL;
    st = dit_backend(tr->model, &be);
    if (st == ZI_OK) st = zi_latents_create(&dlat, be, PyArray_DATA((PyArrayObject *)lat), B, C, h, w);
    if (st == ZI_OK) st = zi_pipeline_denoise(tr->model, &dlat, &da);
    if (st == ZI_OK && decode && vae_offloaded(vae->model) && be->device >= 0) {
        /* offloaded: the transformer's activations and the cached scratch leave the GPU before the
           VAE visits, so the decode's peak sits on the transformer's weights alone */
        dit_release_acts(tr->model);
        st = zi_cuda_empty_cache(be->device);
    }
    Py_END_ALLOW_THREADS
    RELEASE_LOCK(tr->lock);
    {
        /* close the bar without losing an exception the loop raised (Ctrl-C, callback) */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        tmp = PyObject_CallMethod(bar, "close", NULL);
        if (!tmp) PyErr_Clear();
        Py_XDECREF(tmp);
        tmp = NULL;
        PyErr_Restore(et, ev, etb);
    }
    if (st != ZI_OK) {
        if (!PyErr_Occurred()) zi_raise(self->module, st);
        goto fail;
    }

    /* decode and format: on the device, then one download of the final array */
    PyObject *images;
    if (!decode) {
        Py_BEGIN_ALLOW_THREADS
        st = zi_latents_download(&dlat, PyArray_DATA((PyArrayObject *)lat));
        Py_END_ALLOW_THREADS
        if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }
        images = lat;
        Py_INCREF(images);
    } else {
        int f32 = strcmp(otype, "np") == 0 || strcmp(otype, "pt") == 0;
        npy_intp dims[4] = {B, h * up, w * up, vae_config(vae->model)->out_channels};
        img_arr = PyArray_SimpleNew(4, dims, f32 ? NPY_FLOAT32 : NPY_UINT8);
        if (!img_arr) goto fail;
        ACQUIRE_LOCK(vae->lock);
        Py_BEGIN_ALLOW_THREADS
        st = zi_pipeline_decode(vae->model, PyArray_DATA((PyArrayObject *)img_arr), f32 ? ZI_IMAGE_F32 : ZI_IMAGE_UINT8,
                                &dlat);
        Py_END_ALLOW_THREADS
        RELEASE_LOCK(vae->lock);
        if (st != ZI_OK) { zi_raise(self->module, st); goto fail; }
        images = support_call("format_images", Py_BuildValue("(Os)", img_arr, otype), NULL);
        if (!images) goto fail;
    }
    if (return_dict) result = support_call("make_output", Py_BuildValue("(N)", images), NULL);
    else result = Py_BuildValue("(N)", images);
fail:
    if (locked) RELEASE_LOCK(self->lock);
    Py_XDECREF(sc.prompt_embeds);
    Py_XDECREF(prompts);
    Py_XDECREF(pos);
    Py_XDECREF(neg);
    Py_XDECREF(lat);
    Py_XDECREF(bar);
    Py_XDECREF(sched_sig);
    Py_XDECREF(img_arr);
    free(caps);
    free(cap_lens);
    free(neg_caps);
    free(neg_lens);
    if (dlat.be) {
        Py_BEGIN_ALLOW_THREADS
        zi_latents_free(&dlat); /* a device free may wait for queued work */
        Py_END_ALLOW_THREADS
    }
    zi_schedule_free(&sched);
    return result;
}

static PyObject *Pipeline_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PipelineObject *self = (PipelineObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->lock = PyThread_allocate_lock();
    self->progress_config = PyDict_New();
    self->module = PyType_GetModule(type);
    Py_XINCREF(self->module);
    if (!self->lock || !self->progress_config) { Py_DECREF(self); return PyErr_NoMemory(); }
    return (PyObject *)self;
}

static int Pipeline_init(PipelineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"scheduler", "vae", "text_encoder", "tokenizer", "transformer", NULL};
    PyObject *s = NULL, *v = NULL, *te = NULL, *tok = NULL, *tr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO", kwlist, &s, &v, &te, &tok, &tr)) return -1;
    Py_INCREF(s); Py_XSETREF(self->scheduler, s);
    Py_INCREF(v); Py_XSETREF(self->vae, v);
    Py_INCREF(te); Py_XSETREF(self->text_encoder, te);
    Py_INCREF(tok); Py_XSETREF(self->tokenizer, tok);
    Py_INCREF(tr); Py_XSETREF(self->transformer, tr);
    /* the pipeline reads hidden_states[-2]: the text encoder's last layer and final norm are never
       loaded (a direct encode asking for them loads them); a foreign text encoder is left alone */
    TextEncoderObject *tec = component_core(te, get_state(self->module)->TextEncoderType, "text_encoder");
    if (!tec) {
        PyErr_Clear();
        return 0;
    }
    ACQUIRE_LOCK(tec->lock);
    zi_status st = te_limit_layers(tec->model, -2);
    RELEASE_LOCK(tec->lock);
    if (st != ZI_OK) { zi_raise(self->module, st); return -1; }
    return 0;
}

static int Pipeline_traverse(PipelineObject *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->transformer);
    Py_VISIT(self->text_encoder);
    Py_VISIT(self->tokenizer);
    Py_VISIT(self->vae);
    Py_VISIT(self->scheduler);
    Py_VISIT(self->progress_config);
    return 0;
}

static int Pipeline_clear(PipelineObject *self) {
    Py_CLEAR(self->transformer);
    Py_CLEAR(self->text_encoder);
    Py_CLEAR(self->tokenizer);
    Py_CLEAR(self->vae);
    Py_CLEAR(self->scheduler);
    Py_CLEAR(self->progress_config);
    return 0;
}

static void Pipeline_dealloc(PipelineObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Pipeline_clear(self);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_XDECREF(self->module);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* from_pretrained(name_or_path, torch_dtype=None, **kw): resolve, then load each component */
static PyObject *Pipeline_from_pretrained(PyObject *cls, PyObject *args, PyObject *kw) {
    Py_INCREF(args); /* support_call steals it */
    PyObject *loaded = support_call("load_components", args, kw);
    if (!loaded) return NULL;
    PyObject *noargs = PyTuple_New(0), *r = noargs ? PyObject_Call(cls, noargs, loaded) : NULL;
    Py_XDECREF(noargs);
    Py_DECREF(loaded);
    return r;
}

/* the device (-1 CPU, N cuda:N) a component's C model runs on, or -1 for a foreign component */
static int component_device(PipelineObject *self, PyObject *obj) {
    PyObject *core = obj ? PyObject_GetAttrString(obj, "_core") : NULL;
    int d = -1;
    ModuleState *ms = get_state(self->module);
    if (core && (PyObject_TypeCheck(core, ms->TransformerType) || PyObject_TypeCheck(core, ms->TextEncoderType) ||
                 PyObject_TypeCheck(core, ms->VaeType))) {
        ModelObject *mo = (ModelObject *)core;
        if (mo->model) d = mo->kind->device(mo->model);
    }
    if (!core) PyErr_Clear();
    Py_XDECREF(core);
    return d;
}

/* to(device) / to(dtype): every component moves and becomes resident there (offloading ends);
   a GPU that no component runs on any more gets zimage's cached scratch back (cuda_empty_cache).
   Returns the pipeline. */
static PyObject *Pipeline_to(PipelineObject *self, PyObject *args, PyObject *kw) {
    PyObject *comps[] = {self->text_encoder, self->transformer, self->vae};
    int before[3], after[3];
    ACQUIRE_LOCK(self->lock);
    for (int i = 0; i < 3; i++) before[i] = component_device(self, comps[i]);
    for (int i = 0; i < 3; i++) {
        PyObject *m = PyObject_GetAttrString(comps[i], "to");
        PyObject *r = m ? PyObject_Call(m, args, kw) : NULL;
        Py_XDECREF(m);
        if (!r) { RELEASE_LOCK(self->lock); return NULL; }
        Py_DECREF(r);
    }
    for (int i = 0; i < 3; i++) after[i] = component_device(self, comps[i]);
    zi_status st = ZI_OK;
    for (int i = 0; i < 3 && st == ZI_OK; i++) {
        int left = before[i] >= 0 && before[i] != after[0] && before[i] != after[1] && before[i] != after[2];
        for (int j = 0; j < i; j++) left &= before[j] != before[i]; /* once per device */
        if (!left) continue;
        Py_BEGIN_ALLOW_THREADS
        st = zi_cuda_empty_cache(before[i]);
        Py_END_ALLOW_THREADS
    }
    RELEASE_LOCK(self->lock);
    if (st != ZI_OK) return zi_raise(self->module, st);
    Py_INCREF(self);
    return (PyObject *)self;
}

/* enable_model_cpu_offload(gpu_id=None, device=None): diffusers' arguments (read by
   _pipeline_support.offload_device). The transformer becomes resident on the GPU; the text
   encoder's layers go to page-locked host memory and stream to the GPU layer by layer while it
   encodes; the VAE's weights go to page-locked host memory and visit the GPU for each decode. */
static PyObject *pipeline_offload(PipelineObject *self, PyObject *args, PyObject *kw, const char *name) {
    static char *kwlist[] = {"gpu_id", "device", NULL};
    PyObject *gpu_id = Py_None, *device = Py_None, *r = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &gpu_id, &device)) return NULL;
    PyObject *ord = support_call("offload_device", Py_BuildValue("(sOOi)", name, gpu_id, device, self->offload_gpu_id), NULL);
    if (!ord) return NULL;
    int d = (int)PyLong_AsLong(ord);
    Py_DECREF(ord);
    if (d == -1 && PyErr_Occurred()) return NULL;
    ModuleState *ms = get_state(self->module);
    PyObject *te = component_core(self->text_encoder, ms->TextEncoderType, "text_encoder");
    PyObject *vae = te ? component_core(self->vae, ms->VaeType, "vae") : NULL;
    if (!te || !vae) return NULL;
    ACQUIRE_LOCK(self->lock);
    /* host copies first, so resident text encoder / VAE weights leave the GPU before the transformer comes */
    r = PyObject_CallMethod(te, "enable_offload", "i", d);
    if (r) Py_SETREF(r, PyObject_CallMethod(vae, "enable_offload", "i", d));
    if (r) Py_SETREF(r, PyObject_CallMethod(self->transformer, "to", "i", d));
    if (r) self->offload_gpu_id = d;
    RELEASE_LOCK(self->lock);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *Pipeline_enable_model_cpu_offload(PipelineObject *self, PyObject *args, PyObject *kw) {
    return pipeline_offload(self, args, kw, "enable_model_cpu_offload");
}

/* diffusers' sequential offload streams every model, the transformer too; here it is model offload
   (the text encoder streamed layer by layer, the transformer resident), with a warning saying so */
static PyObject *Pipeline_enable_sequential_cpu_offload(PipelineObject *self, PyObject *args, PyObject *kw) {
    if (PyErr_WarnEx(PyExc_UserWarning,
                     "zimage: enable_sequential_cpu_offload() does what enable_model_cpu_offload() does: the text "
                     "encoder streams from host memory layer by layer and the VAE visits per decode, but the "
                     "transformer (11.5 GiB in bf16) stays resident on the GPU",
                     1) < 0)
        return NULL;
    return pipeline_offload(self, args, kw, "enable_sequential_cpu_offload");
}

static PyObject *Pipeline_set_progress_bar_config(PipelineObject *self, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args)) return PyErr_Format(PyExc_TypeError, "set_progress_bar_config takes keyword arguments");
    if (kw && PyDict_Update(self->progress_config, kw) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Pipeline_encode_prompt(PipelineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prompt", "do_classifier_free_guidance", "negative_prompt", "prompt_embeds",
                             "negative_prompt_embeds", "device", "max_sequence_length", NULL};
    PyObject *prompt, *negative = Py_None, *pe = Py_None, *npe = Py_None, *device = Py_None;
    int do_cfg = 1, max_len = 512;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pOOOOi", kwlist, &prompt, &do_cfg, &negative, &pe, &npe, &device, &max_len))
        return NULL;
    PyObject *prompts = as_prompt_list(prompt, "prompt"), *pos = NULL, *neg = NULL, *negs = NULL;
    if (!prompts) return NULL;
    ACQUIRE_LOCK(self->lock);
    pos = pe != Py_None ? (Py_INCREF(pe), pe) : encode_prompts(self, prompts, max_len);
    if (pos && do_cfg) {
        if (npe != Py_None) { neg = npe; Py_INCREF(neg); }
        else {
            if (negative == Py_None) {
                negs = PyList_New(PyList_GET_SIZE(prompts));
                for (Py_ssize_t i = 0; negs && i < PyList_GET_SIZE(prompts); i++) PyList_SET_ITEM(negs, i, PyUnicode_FromString(""));
            } else negs = as_prompt_list(negative, "negative_prompt");
            if (negs) neg = encode_prompts(self, negs, max_len);
        }
    } else if (pos) neg = PyList_New(0);
    RELEASE_LOCK(self->lock);
    Py_DECREF(prompts);
    Py_XDECREF(negs);
    if (!pos || !neg) { Py_XDECREF(pos); Py_XDECREF(neg); return NULL; }
    return Py_BuildValue("(NN)", pos, neg);
}

#define PIPE_COMPONENT_GETTER(name)                                                  \
    static PyObject *Pipeline_get_##name(PipelineObject *self, void *closure) {       \
        PyObject *v = self->name ? self->name : Py_None;                              \
        Py_INCREF(v);                                                                 \
        return v;                                                                     \
    }
PIPE_COMPONENT_GETTER(transformer)
PIPE_COMPONENT_GETTER(text_encoder)
PIPE_COMPONENT_GETTER(tokenizer)
PIPE_COMPONENT_GETTER(vae)
PIPE_COMPONENT_GETTER(scheduler)

static PyObject *Pipeline_get_device(PipelineObject *self, void *closure) {
    return PyObject_GetAttrString(self->transformer, "device");
}

static PyObject *Pipeline_get_vae_scale_factor(PipelineObject *self, void *closure) {
    ModuleState *ms = get_state(self->module);
    VaeObject *vae = component_core(self->vae, ms->VaeType, "vae");
    return vae ? PyLong_FromLong(vae_up_factor(vae->model)) : NULL;
}

static PyGetSetDef Pipeline_getset[] = {
    {"transformer", (getter)Pipeline_get_transformer, NULL, "the ZImageTransformer2DModel", NULL},
    {"text_encoder", (getter)Pipeline_get_text_encoder, NULL, "the Qwen3Model", NULL},
    {"tokenizer", (getter)Pipeline_get_tokenizer, NULL, "the Qwen2Tokenizer", NULL},
    {"vae", (getter)Pipeline_get_vae, NULL, "the AutoencoderKL", NULL},
    {"scheduler", (getter)Pipeline_get_scheduler, NULL, "the FlowMatchEulerDiscreteScheduler", NULL},
    {"device", (getter)Pipeline_get_device, NULL, "where the models run", NULL},
    {"vae_scale_factor", (getter)Pipeline_get_vae_scale_factor, NULL, "pixels per latent cell (8)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Pipeline_methods[] = {
    {"from_pretrained", (PyCFunction)(void (*)(void))Pipeline_from_pretrained, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_pretrained(name_or_path, torch_dtype=None, **kw): a local diffusers folder or a hub id (caches, then download)"},
    {"to", (PyCFunction)(void (*)(void))Pipeline_to, METH_VARARGS | METH_KEYWORDS,
     "to(device) -> the pipeline, every component resident on device (ends offloading)"},
    {"enable_model_cpu_offload", (PyCFunction)(void (*)(void))Pipeline_enable_model_cpu_offload,
     METH_VARARGS | METH_KEYWORDS,
     "enable_model_cpu_offload(gpu_id=None, device=None): the transformer resident on the GPU, the text encoder "
     "and the VAE in page-locked host memory, visiting the GPU while they run (the text encoder layer by layer); "
     "pipe.to(device) makes everything resident again. RuntimeError without a CUDA GPU, as in diffusers"},
    {"enable_sequential_cpu_offload", (PyCFunction)(void (*)(void))Pipeline_enable_sequential_cpu_offload,
     METH_VARARGS | METH_KEYWORDS,
     "enable_sequential_cpu_offload(gpu_id=None, device=None): enable_model_cpu_offload, with a UserWarning: the "
     "transformer stays resident"},
    {"set_progress_bar_config", (PyCFunction)(void (*)(void))Pipeline_set_progress_bar_config, METH_VARARGS | METH_KEYWORDS,
     "set_progress_bar_config(disable=True, ...) as in diffusers"},
    {"encode_prompt", (PyCFunction)(void (*)(void))Pipeline_encode_prompt, METH_VARARGS | METH_KEYWORDS,
     "encode_prompt(prompt, do_classifier_free_guidance=True, negative_prompt=None, ...) -> (list, list)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Pipeline_slots[] = {
    {Py_tp_new, Pipeline_new},
    {Py_tp_init, Pipeline_init},
    {Py_tp_call, Pipeline_call},
    {Py_tp_dealloc, Pipeline_dealloc},
    {Py_tp_traverse, Pipeline_traverse},
    {Py_tp_clear, Pipeline_clear},
    {Py_tp_methods, Pipeline_methods},
    {Py_tp_getset, Pipeline_getset},
    {Py_tp_doc, "ZImagePipeline: Z-Image-Turbo text-to-image with diffusers' API, in C"},
    {0, NULL},
};

static PyType_Spec Pipeline_spec = {
    .name = "zimage.ZImagePipeline",
    .basicsize = sizeof(PipelineObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Pipeline_slots,
};

/* PNG out, for zimage.Image.save / _repr_png_ */
static PyArrayObject *as_u8_image(PyObject *o) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(o, NPY_UINT8, 3, 3, NPY_ARRAY_IN_ARRAY);
    if (!a) return NULL;
    if (PyArray_DIM(a, 2) != 1 && PyArray_DIM(a, 2) != 3 && PyArray_DIM(a, 2) != 4) {
        PyErr_SetString(PyExc_ValueError, "an image is (H, W, 1|3|4) uint8");
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *py_encode_png(PyObject *module, PyObject *arg) {
    PyArrayObject *a = as_u8_image(arg);
    if (!a) return NULL;
    uint8_t *png = NULL;
    size_t len = 0;
    zi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = zi_png_encode(PyArray_DATA(a), (int)PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1), (int)PyArray_DIM(a, 2), 6, &png, &len);
    Py_END_ALLOW_THREADS
    Py_DECREF(a);
    if (st != ZI_OK) return zi_raise(module, st);
    PyObject *r = PyBytes_FromStringAndSize((const char *)png, (Py_ssize_t)len);
    free(png);
    return r;
}

static PyObject *py_write_png(PyObject *module, PyObject *args) {
    PyObject *path_bytes = NULL, *img;
    if (!PyArg_ParseTuple(args, "O&O", PyUnicode_FSConverter, &path_bytes, &img)) return NULL;
    PyArrayObject *a = as_u8_image(img);
    if (!a) { Py_DECREF(path_bytes); return NULL; }
    zi_status st;
    Py_BEGIN_ALLOW_THREADS
    st = zi_png_write(PyBytes_AS_STRING(path_bytes), PyArray_DATA(a), (int)PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1), (int)PyArray_DIM(a, 2));
    Py_END_ALLOW_THREADS
    Py_DECREF(a);
    Py_DECREF(path_bytes);
    if (st != ZI_OK) return zi_raise(module, st);
    Py_RETURN_NONE;
}

static PyMethodDef pipeline_functions[] = {
    {"encode_png", py_encode_png, METH_O, "encode_png(uint8 (H, W, C)) -> PNG bytes"},
    {"write_png", py_write_png, METH_VARARGS, "write_png(path, uint8 (H, W, C))"},
    {NULL, NULL, 0, NULL},
};
/* ==== pipeline (end) ==== */

/* ======================================================================================== */
/* module */

static PyMethodDef module_methods[] = {
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS, "number of usable CUDA GPUs (0 without GPU/driver/CUDA build)"},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "whether this build includes the CUDA backend"},
    {"cuda_mem_info", py_cuda_mem_info, METH_VARARGS, "cuda_mem_info(device=0) -> (free, total) bytes, device-wide"},
    {"cuda_memory_stats", py_cuda_memory_stats, METH_VARARGS,
     "cuda_memory_stats(device=0) -> dict(allocated, peak, pinned): bytes of device memory zimage holds on the GPU now "
     "and at most since the last reset, and of page-locked host memory holding offloaded weights"},
    {"cuda_reset_peak_memory_stats", py_cuda_reset_peak_memory_stats, METH_VARARGS,
     "cuda_reset_peak_memory_stats(device=0): the peak becomes the current allocation"},
    {"cuda_empty_cache", py_cuda_empty_cache, METH_VARARGS,
     "cuda_empty_cache(device=0): free zimage's cached scratch and staging buffers on the GPU (they regrow on use)"},
    {"cuda_device_properties", py_cuda_device_properties, METH_VARARGS,
     "cuda_device_properties(device=0) -> dict(name, multi_processor_count, max_threads_per_multi_processor, major, minor)"},
    {"read_safetensors", py_read_safetensors, METH_O, "read_safetensors(path) -> dict of float32 arrays (validated)"},
    {"dit_weight_manifest", py_dit_weight_manifest, METH_O,
     "dit_weight_manifest(config_json) -> [(name, shape)] the transformer loader expects"},
    {"flow_match_schedule", (PyCFunction)(void (*)(void))py_flow_match_schedule, METH_VARARGS | METH_KEYWORDS,
     "flow_match_schedule(steps, shift=3.0, sigmas=None, num_train_timesteps=1000) -> (sigmas[N+1], timesteps[N], t_model[N])"},
    {"randn_cuda", (PyCFunction)(void (*)(void))py_randn_cuda, METH_VARARGS | METH_KEYWORDS,
     "randn_cuda(shape, seed, offset=0, sms=132, threads_per_sm=2048) -> float32 array: torch.randn on a CUDA generator, bit for bit"},
    {"philox_offset_increment", (PyCFunction)(void (*)(void))py_philox_offset_increment, METH_VARARGS | METH_KEYWORDS,
     "philox_offset_increment(n, sms=132, threads_per_sm=2048) -> how far one randn of n elements moves a CUDA generator's offset"},
    {"randn_cpu", (PyCFunction)(void (*)(void))py_randn_cpu, METH_VARARGS | METH_KEYWORDS,
     "randn_cpu(shape, seed=None, state=None, kernel='native') -> float32 array: torch.randn on a CPU generator, bit for bit"},
    {"cpu_generator_state", py_cpu_generator_state, METH_O,
     "cpu_generator_state(seed) -> bytes: torch.Generator().manual_seed(seed).get_state()"},
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
    if (add_type(module, &Tokenizer_spec, &s->TokenizerType) < 0) return -1;
    /* ==== tokenizer type registration (end) ==== */
    /* ==== text encoder type registration (begin) ==== */
    if (add_type(module, &TextEncoder_spec, &s->TextEncoderType) < 0) return -1;
    if (PyModule_AddFunctions(module, te_module_functions) < 0) return -1;
    /* ==== text encoder type registration (end) ==== */
    /* ==== vae type registration (begin) ==== */
    if (add_type(module, &Vae_spec, &s->VaeType) < 0) return -1;
    if (PyModule_AddFunctions(module, vae_functions) < 0) return -1;
    /* ==== vae type registration (end) ==== */
    if (add_type(module, &Pipeline_spec, &s->PipelineType) < 0) return -1;
    if (PyModule_AddFunctions(module, pipeline_functions) < 0) return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    ModuleState *s = get_state(module);
    Py_VISIT(s->ZImageError);
    Py_VISIT(s->TransformerType);
    Py_VISIT(s->TokenizerType);
    Py_VISIT(s->TextEncoderType);
    Py_VISIT(s->VaeType);
    Py_VISIT(s->PipelineType);
    return 0;
}

static int module_clear(PyObject *module) {
    ModuleState *s = get_state(module);
    Py_CLEAR(s->ZImageError);
    Py_CLEAR(s->TransformerType);
    Py_CLEAR(s->TokenizerType);
    Py_CLEAR(s->TextEncoderType);
    Py_CLEAR(s->VaeType);
    Py_CLEAR(s->PipelineType);
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
