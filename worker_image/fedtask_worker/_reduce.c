/* The weighted-sum kernel of the aggregate stage: out = sum_i w_i * x_i over N separate float buffers in one pass.
 *
 * numpy and torch can only add one update at a time (acc += w * x), which streams the accumulator through the
 * cache once per update; this kernel walks the output in chunks that stay in L1 and folds every update into a chunk
 * before moving on, so each input byte is read from memory once and the output is written once. It runs with the
 * GIL released, so the Python thread pool runs blocks on every core. The sum for each element is taken in input
 * order (x_0 first) with no fused multiply-add (setup.py builds with -ffp-contract=off), so it is the same on every
 * run and every machine, bit for bit what numpy gives for acc = acc + w * x one update at a time.
 *
 * weighted_sum(out, inputs, weights, accumulate) -> bool
 *   out: writable contiguous buffer of float32 ('f') or float64 ('d'); inputs: sequence of buffers of the same format
 *   and length; weights: sequence of floats (one per input); accumulate: add to out instead of overwriting it.
 *   Returns whether every output element is finite.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

/* 2048 elements: the float64 chunk (16 KB) and the float32 one (8 KB) stay in a 32-48 KB L1 data cache. */
#define CHUNK 2048

#define DEFINE_KERNEL(NAME, T)                                                                                   \
    static int NAME(T *out, T *const *inputs, const double *weights, Py_ssize_t count, Py_ssize_t length,       \
                    int accumulate)                                                                              \
    {                                                                                                            \
        int finite = 1;                                                                                          \
        for (Py_ssize_t start = 0; start < length; start += CHUNK) {                                             \
            Py_ssize_t stop = start + CHUNK < length ? start + CHUNK : length;                                   \
            T *restrict acc = out + start;                                                                       \
            Py_ssize_t size = stop - start;                                                                      \
            Py_ssize_t first = 0;                                                                                \
            if (!accumulate) {                                                                                   \
                const T *restrict x = inputs[0] + start;                                                         \
                const T w = (T)weights[0];                                                                       \
                for (Py_ssize_t j = 0; j < size; j++) acc[j] = w * x[j];                                         \
                first = 1;                                                                                       \
            }                                                                                                    \
            Py_ssize_t i = first;                                                                                \
            /* four updates per pass over the chunk: four memory streams in flight, same rounding as one by one */ \
            for (; i + 4 <= count; i += 4) {                                                                     \
                const T *restrict a = inputs[i] + start, *restrict b = inputs[i + 1] + start;                    \
                const T *restrict c = inputs[i + 2] + start, *restrict d = inputs[i + 3] + start;                \
                const T wa = (T)weights[i], wb = (T)weights[i + 1], wc = (T)weights[i + 2], wd = (T)weights[i + 3]; \
                for (Py_ssize_t j = 0; j < size; j++)                                                            \
                    acc[j] = (((acc[j] + wa * a[j]) + wb * b[j]) + wc * c[j]) + wd * d[j];                       \
            }                                                                                                    \
            for (; i < count; i++) {                                                                             \
                const T *restrict x = inputs[i] + start;                                                         \
                const T w = (T)weights[i];                                                                       \
                for (Py_ssize_t j = 0; j < size; j++) acc[j] += w * x[j];                                        \
            }                                                                                                    \
            int bad = 0; /* x - x is 0 for a finite x and NaN for NaN or Inf; an integer OR vectorizes */       \
            for (Py_ssize_t j = 0; j < size; j++) bad |= (acc[j] - acc[j]) != 0;                                 \
            if (bad) finite = 0;                                                                                 \
        }                                                                                                        \
        return finite;                                                                                           \
    }

DEFINE_KERNEL(weighted_sum_f32, float)
DEFINE_KERNEL(weighted_sum_f64, double)

static PyObject *weighted_sum(PyObject *self, PyObject *args)
{
    PyObject *out_object, *inputs_object, *weights_object;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOOp", &out_object, &inputs_object, &weights_object, &accumulate))
        return NULL;
    PyObject *inputs_seq = PySequence_Fast(inputs_object, "inputs must be a sequence of buffers");
    if (inputs_seq == NULL)
        return NULL;
    PyObject *weights_seq = PySequence_Fast(weights_object, "weights must be a sequence of floats");
    if (weights_seq == NULL) {
        Py_DECREF(inputs_seq);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(inputs_seq);
    PyObject *result = NULL;
    Py_buffer out = {0};
    Py_buffer *views = NULL;
    void **pointers = NULL;
    double *weights = NULL;
    Py_ssize_t acquired = 0;

    if (PySequence_Fast_GET_SIZE(weights_seq) != count) {
        PyErr_SetString(PyExc_ValueError, "one weight per input is needed");
        goto done;
    }
    if (count == 0 && !accumulate) {
        PyErr_SetString(PyExc_ValueError, "no inputs");
        goto done;
    }
    if (PyObject_GetBuffer(out_object, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    char format = out.format ? out.format[0] : 'B';
    if ((format != 'f' && format != 'd') || (out.format[1] != '\0')) {
        PyErr_Format(PyExc_TypeError, "out must hold float32 or float64, not format %s", out.format);
        goto done;
    }
    Py_ssize_t length = out.len / out.itemsize;
    views = PyMem_Calloc(count ? count : 1, sizeof(Py_buffer));
    pointers = PyMem_Calloc(count ? count : 1, sizeof(void *));
    weights = PyMem_Calloc(count ? count : 1, sizeof(double));
    if (views == NULL || pointers == NULL || weights == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(inputs_seq, i), &views[i],
                               PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        acquired++;
        if (views[i].format == NULL || strcmp(views[i].format, out.format) != 0 || views[i].len != out.len) {
            PyErr_Format(PyExc_ValueError, "input %zd differs from out in format or length", i);
            goto done;
        }
        pointers[i] = views[i].buf;
        weights[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(weights_seq, i));
        if (weights[i] == -1.0 && PyErr_Occurred())
            goto done;
    }
    int finite;
    Py_BEGIN_ALLOW_THREADS
    if (format == 'f')
        finite = weighted_sum_f32((float *)out.buf, (float *const *)pointers, weights, count, length, accumulate);
    else
        finite = weighted_sum_f64((double *)out.buf, (double *const *)pointers, weights, count, length, accumulate);
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(finite);

done:
    for (Py_ssize_t i = 0; i < acquired; i++)
        PyBuffer_Release(&views[i]);
    if (out.obj != NULL)
        PyBuffer_Release(&out);
    PyMem_Free(views);
    PyMem_Free(pointers);
    PyMem_Free(weights);
    Py_DECREF(inputs_seq);
    Py_DECREF(weights_seq);
    return result;
}

static PyMethodDef methods[] = {
    {"weighted_sum", weighted_sum, METH_VARARGS,
     "weighted_sum(out, inputs, weights, accumulate) -> all_finite: out (+)= sum_i weights[i] * inputs[i]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reduce", "The aggregate stage's weighted-sum kernel.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__reduce(void) { return PyModule_Create(&module); }
