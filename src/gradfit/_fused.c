/* gradfit._fused: the one-pass loss and gradient of a linear model on mean squared error.
 *
 * For rows [a, b) of a design Z stored column by column (column j at z + j * ld):
 *     r[i] = sum_j Z[i, j] w[j] + bias - y[i]       (the residuals, written to r)
 *     g[j] = sum_i Z[i, j] r[i]                     (skipped when g is NULL)
 * and the sums of r^2 and r. Rows go in blocks of `block`: the first product reads a block
 * from memory, the second finds it still in the core's cache, so Z crosses memory once;
 * while the second runs, the next block is prefetched (memory would idle otherwise).
 * Partial sums are taken per block in the data's type and added up in double.
 *
 * fastopt.LinearMSE checks the arguments (dtype, layout, sizes) and shares the rows out to
 * threads; the GIL is released while a call runs. Without a C compiler at install time this
 * module is missing and LinearMSE uses torch's matrix-vector products instead (same numbers
 * up to rounding). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One build for any x86-64 machine: AVX-512, AVX2+FMA and baseline versions of each kernel,
 * chosen at load time by the CPU (GCC's function multiversioning; GCC 11 knows the x86-64-v3/v4
 * levels). Other compilers build the baseline version. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define GRADFIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#ifndef GRADFIT_CLONES
#define GRADFIT_CLONES
#endif
#if !defined(__GNUC__) && !defined(__clang__)
#define __builtin_prefetch(p, rw, locality) ((void)0)
#endif
#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#endif
#define LINE 64 /* bytes per cache line */

#define KERNEL(NAME, T)                                                                             \
    GRADFIT_CLONES static void NAME(const T *restrict z, int64_t ld, int64_t m, const T *restrict w, \
                                    const T *restrict y, T bias, T *restrict r, int64_t a,           \
                                    int64_t b, int64_t block, double *restrict g,                    \
                                    double *restrict out)                                            \
    {                                                                                               \
        double rr = 0.0, rs = 0.0;                                                                  \
        if (g)                                                                                      \
            for (int64_t j = 0; j < m; j++) g[j] = 0.0;                                             \
        for (int64_t s = a; s < b; s += block) {                                                    \
            const int64_t e = s + block < b ? s + block : b;                                        \
            _Pragma("omp simd")                                                                     \
            for (int64_t i = s; i < e; i++) r[i] = bias - y[i];                                     \
            int64_t j = 0;                                                                          \
            for (; j + 4 <= m; j += 4) { /* four columns per sweep: r is loaded once for them */     \
                const T *z0 = z + j * ld, *z1 = z0 + ld, *z2 = z1 + ld, *z3 = z2 + ld;              \
                const T w0 = w[j], w1 = w[j + 1], w2 = w[j + 2], w3 = w[j + 3];                     \
                _Pragma("omp simd")                                                                 \
                for (int64_t i = s; i < e; i++)                                                     \
                    r[i] += z0[i] * w0 + z1[i] * w1 + z2[i] * w2 + z3[i] * w3;                      \
            }                                                                                       \
            for (; j < m; j++) {                                                                    \
                const T *z0 = z + j * ld;                                                           \
                const T w0 = w[j];                                                                  \
                _Pragma("omp simd")                                                                 \
                for (int64_t i = s; i < e; i++) r[i] += z0[i] * w0;                                 \
            }                                                                                       \
            if (g) {                                                                                \
                const int64_t ne = e + block < b ? e + block : b; /* the next block's end */        \
                for (j = 0; j + 4 <= m; j += 4) {                                                   \
                    const T *z0 = z + j * ld, *z1 = z0 + ld, *z2 = z1 + ld, *z3 = z2 + ld;          \
                    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                               \
                    /* memory is idle while this product runs from cache: ask for the next block */ \
                    for (int64_t i = e; i < ne; i += LINE / (int64_t)sizeof(T)) {                   \
                        __builtin_prefetch(z0 + i, 0, 2);                                           \
                        __builtin_prefetch(z1 + i, 0, 2);                                           \
                        __builtin_prefetch(z2 + i, 0, 2);                                           \
                        __builtin_prefetch(z3 + i, 0, 2);                                           \
                    }                                                                               \
                    _Pragma("omp simd reduction(+ : a0, a1, a2, a3)")                               \
                    for (int64_t i = s; i < e; i++) {                                               \
                        const T ri = r[i];                                                          \
                        a0 += z0[i] * ri;                                                           \
                        a1 += z1[i] * ri;                                                           \
                        a2 += z2[i] * ri;                                                           \
                        a3 += z3[i] * ri;                                                           \
                    }                                                                               \
                    g[j] += a0;                                                                     \
                    g[j + 1] += a1;                                                                 \
                    g[j + 2] += a2;                                                                 \
                    g[j + 3] += a3;                                                                 \
                }                                                                                   \
                for (; j < m; j++) {                                                                \
                    const T *z0 = z + j * ld;                                                       \
                    T a0 = 0;                                                                       \
                    for (int64_t i = e; i < ne; i += LINE / (int64_t)sizeof(T))                     \
                        __builtin_prefetch(z0 + i, 0, 2);                                           \
                    _Pragma("omp simd reduction(+ : a0)")                                           \
                    for (int64_t i = s; i < e; i++) a0 += z0[i] * r[i];                             \
                    g[j] += a0;                                                                     \
                }                                                                                   \
            }                                                                                       \
            T q = 0, p = 0;                                                                         \
            _Pragma("omp simd reduction(+ : q, p)")                                                 \
            for (int64_t i = s; i < e; i++) {                                                       \
                q += r[i] * r[i];                                                                   \
                p += r[i];                                                                          \
            }                                                                                       \
            rr += q;                                                                                \
            rs += p;                                                                                \
        }                                                                                           \
        out[0] = rr;                                                                                \
        out[1] = rs;                                                                                \
    }

KERNEL(linear_mse_f32, float)
KERNEL(linear_mse_f64, double)

static PyObject *linear_mse(PyObject *self, PyObject *args)
{
    unsigned long long z, w, y, r, g;
    long long ld, m, a, b, block;
    double bias;
    int dbl;
    if (!PyArg_ParseTuple(args, "KLLKKdKLLLKp", &z, &ld, &m, &w, &y, &bias, &r, &a, &b, &block, &g, &dbl))
        return NULL;
    if (!z || !w || !y || !r || m < 0 || ld < b || a < 0 || b < a || block < 1) {
        PyErr_SetString(PyExc_ValueError, "linear_mse: null pointer or inconsistent sizes");
        return NULL;
    }
    if (block > b - a)
        block = b - a > 0 ? b - a : 1; /* (and s + block cannot overflow) */
    double out[2] = {0.0, 0.0};
    Py_BEGIN_ALLOW_THREADS
    if (dbl)
        linear_mse_f64((const double *)(uintptr_t)z, ld, m, (const double *)(uintptr_t)w,
                       (const double *)(uintptr_t)y, bias, (double *)(uintptr_t)r, a, b, block,
                       (double *)(uintptr_t)g, out);
    else
        linear_mse_f32((const float *)(uintptr_t)z, ld, m, (const float *)(uintptr_t)w,
                       (const float *)(uintptr_t)y, (float)bias, (float *)(uintptr_t)r, a, b, block,
                       (double *)(uintptr_t)g, out);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("dd", out[0], out[1]);
}

/* out[j] = scale * sum over the parts p (in order) of g[p * m + j], in the data's type. */
static PyObject *gather(PyObject *self, PyObject *args)
{
    unsigned long long g, out;
    long long parts, m;
    double scale;
    int dbl;
    if (!PyArg_ParseTuple(args, "KLLdKp", &g, &parts, &m, &scale, &out, &dbl))
        return NULL;
    if (!g || !out || parts < 1 || m < 0) {
        PyErr_SetString(PyExc_ValueError, "gather: null pointer or inconsistent sizes");
        return NULL;
    }
    const double *gp = (const double *)(uintptr_t)g;
    for (long long j = 0; j < m; j++) {
        double sum = 0.0;
        for (long long p = 0; p < parts; p++) sum += gp[p * m + j];
        if (dbl)
            ((double *)(uintptr_t)out)[j] = scale * sum;
        else
            ((float *)(uintptr_t)out)[j] = (float)(scale * sum);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"linear_mse", linear_mse, METH_VARARGS,
     "linear_mse(z, ld, m, w, y, bias, r, a, b, block, g, double) -> (sum r^2, sum r) over rows [a, b).\n"
     "Pointers are addresses of contiguous CPU buffers; g (m doubles) may be 0 for the loss alone."},
    {"gather", gather, METH_VARARGS,
     "gather(g, parts, m, scale, out, double): out[j] = scale * sum_p g[p, j] (g: parts x m doubles)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradfit._fused",
                                    "The one-pass linear least-squares kernel of fastopt.LinearMSE.", -1, methods};

/* The interface's version: gradfit.kernel.ABI must match it (an editable install keeps an old build
 * until `pip install -e .` runs again; gradfit then goes without it rather than call it wrongly). */
#define GRADFIT_KERNEL_ABI 1

PyMODINIT_FUNC PyInit__fused(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", GRADFIT_KERNEL_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
