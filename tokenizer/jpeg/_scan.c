/* tokenizer.jpeg._scan: the compiled JPEG path's Python entry points (wrapped by scan.py).
 *
 *   read(jpeg) -> (height, width, hv, qtables, planes, shapes) | reason
 *   tokens(planes, height, width, hv, order, raster, bands, vocab, header, header_pos) -> (ids, pos)
 *   coefficients(ids, start, height, width, hv, order, raster, bands, vocab) -> planes | reason
 *   write(planes, height, width, hv, tables, table_of) -> jpeg | reason
 *   accepts(pieces, offsets, order, lcp, state, ctx, units, vocab) -> mask   (accepts.py)
 *
 * A reason (str) means "not taken here": the caller uses the reference path. Arrays cross as buffers
 * (bytes, bytearray, numpy): no numpy headers are needed to build this. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_scan.h"

/* -- geometry shared by the reader, the writer and the token coder --------------------------------- */

int geometry(Geometry *g, int height, int width, int n, const int *hv) {
    memset(g, 0, sizeof *g);
    g->height = height; g->width = width; g->n = n;
    g->hmax = g->vmax = 1;
    for (int c = 0; c < n; c++) {
        if (hv[2 * c] < 1 || hv[2 * c] > 4 || hv[2 * c + 1] < 1 || hv[2 * c + 1] > 4) return -1;
        g->hmax = hv[2 * c] > g->hmax ? hv[2 * c] : g->hmax;
        g->vmax = hv[2 * c + 1] > g->vmax ? hv[2 * c + 1] : g->vmax;
    }
    g->mcu_rows = (height + 8 * g->vmax - 1) / (8 * g->vmax);
    g->mcu_cols = (width + 8 * g->hmax - 1) / (8 * g->hmax);
    for (int c = 0; c < n; c++) {
        Plane *P = &g->c[c];
        P->h = hv[2 * c];
        P->v = hv[2 * c + 1];
        P->rows = (int)(((long)height * P->v + 8L * g->vmax - 1) / (8L * g->vmax));
        P->cols = (int)(((long)width * P->h + 8L * g->hmax - 1) / (8L * g->hmax));
        P->prows = n == 1 ? P->rows : g->mcu_rows * P->v;
        P->pcols = n == 1 ? P->cols : g->mcu_cols * P->h;
        P->first = g->n_blocks;
        g->n_blocks += (size_t)P->prows * P->pcols;
    }
    return 0;
}

size_t scan_slots(const Geometry *g) {
    return g->n == 1 ? (size_t)g->c[0].rows * g->c[0].cols : g->n_blocks;
}

size_t scan_order(const Geometry *g, Slot *out) {
    size_t k = 0;
    if (g->n == 1) {
        for (size_t b = 0; b < scan_slots(g); b++) out[k++] = (Slot){(uint32_t)b, 0, 0};
        return k;
    }
    for (int my = 0; my < g->mcu_rows; my++)
        for (int mx = 0; mx < g->mcu_cols; mx++)
            for (int c = 0; c < g->n; c++) {
                const Plane *P = &g->c[c];
                for (int dv = 0; dv < P->v; dv++)
                    for (int dh = 0; dh < P->h; dh++) {
                        int r = my * P->v + dv, col = mx * P->h + dh;
                        out[k++] = (Slot){(uint32_t)(P->first + (size_t)r * P->pcols + col), (uint8_t)c,
                                          (uint8_t)(r >= P->rows || col >= P->cols)};
                    }
            }
    return k;
}

/* -- argument helpers ------------------------------------------------------------------------------- */

static int parse_hv(PyObject *t, int *hv, int *n) {
    Py_ssize_t len = PyTuple_Check(t) ? PyTuple_GET_SIZE(t) : -1;
    if (len != 2 && len != 6) {
        PyErr_SetString(PyExc_ValueError, "hv: a tuple of 2 or 6 sampling factors");
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) hv[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, i));
    *n = (int)len / 2;
    return PyErr_Occurred() ? -1 : 0;
}

static int parse_geometry(Geometry *g, int height, int width, PyObject *hv_t) {
    int hv[2 * MAX_COMP], n;
    if (parse_hv(hv_t, hv, &n)) return -1;
    if (height < 1 || width < 1 || geometry(g, height, width, n, hv)) {
        PyErr_SetString(PyExc_ValueError, "bad geometry");
        return -1;
    }
    return 0;
}

static int parse_order(Order *o, const Py_buffer *rows, int raster, PyObject *bands) {
    Py_ssize_t nb = PyTuple_Check(bands) ? PyTuple_GET_SIZE(bands) : -1;
    if (nb < 2 || nb > 65 || rows->len % (5 * (Py_ssize_t)sizeof(int32_t))) {
        PyErr_SetString(PyExc_ValueError, "bad block order or bands");
        return -1;
    }
    o->rows = rows->buf;
    o->n = (size_t)rows->len / (5 * sizeof(int32_t));
    o->raster = raster;
    o->n_bands = (int)nb - 1;
    for (Py_ssize_t i = 0; i < nb; i++) o->bands[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(bands, i));
    return PyErr_Occurred() ? -1 : 0;
}

static int parse_vocab(VocabIds *v, PyObject *t) {
    int *f[] = {&v->dc_range, &v->ac_range, &v->max_skip, &v->byte, &v->dc, &v->ac, &v->ac_stride,
                &v->zrl, &v->eob, &v->skip, &v->eos, &v->size};
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 12) {
        PyErr_SetString(PyExc_ValueError, "vocab: a tuple of 12 ids");
        return -1;
    }
    for (int i = 0; i < 12; i++) *f[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, i));
    return PyErr_Occurred() ? -1 : 0;
}

static int check_planes(const Py_buffer *planes, const Geometry *g) {
    if ((size_t)planes->len != planes_size(g)) {
        PyErr_SetString(PyExc_ValueError, "planes do not fit the geometry");
        return -1;
    }
    return 0;
}

/* -- entry points ----------------------------------------------------------------------------------- */

/* Planes as a zeroed bytearray; called by the reader without the GIL, so it takes it. */
static int16_t *alloc_planes(void *ctx, size_t bytes) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *b = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)bytes);
    if (!b) PyErr_Clear();
    PyGILState_Release(gil);
    if (!b) return NULL;
    memset(PyByteArray_AS_STRING(b), 0, bytes);
    *(PyObject **)ctx = b;
    return (int16_t *)PyByteArray_AS_STRING(b);
}

static PyObject *py_read(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    Geometry g;
    int hv[2 * MAX_COMP];
    uint16_t qt[MAX_COMP][64];
    PyObject *planes = NULL;
    const char *why;
    Py_BEGIN_ALLOW_THREADS
    why = read_jpeg(data.buf, (size_t)data.len, &g, hv, qt, alloc_planes, &planes);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (why) {
        Py_XDECREF(planes);
        return PyUnicode_FromString(why);
    }
    PyObject *hv_t = PyTuple_New(2 * g.n), *shapes = PyTuple_New(g.n);
    for (int c = 0; c < g.n; c++) {
        PyTuple_SET_ITEM(hv_t, 2 * c, PyLong_FromLong(hv[2 * c]));
        PyTuple_SET_ITEM(hv_t, 2 * c + 1, PyLong_FromLong(hv[2 * c + 1]));
        const Plane *P = &g.c[c];
        PyTuple_SET_ITEM(shapes, c, Py_BuildValue("(iiii)", P->prows, P->pcols, P->rows, P->cols));
    }
    return Py_BuildValue("(iiNy#NN)", g.height, g.width, hv_t, (const char *)qt,
                         (Py_ssize_t)(g.n * 64 * sizeof(uint16_t)), planes, shapes);
}

static PyObject *py_tokens(PyObject *self, PyObject *args) {
    Py_buffer planes, rows, header, header_pos;
    int height, width, raster;
    PyObject *hv, *bands, *vocab, *ids = NULL, *pos = NULL;
    if (!PyArg_ParseTuple(args, "y*iiOy*iOOy*y*", &planes, &height, &width, &hv, &rows, &raster, &bands,
                          &vocab, &header, &header_pos))
        return NULL;
    Geometry g;
    Order o;
    VocabIds v;
    size_t hlen = (size_t)header.len / sizeof(int32_t);
    if (parse_geometry(&g, height, width, hv) || check_planes(&planes, &g) || parse_order(&o, &rows, raster, bands)
        || parse_vocab(&v, vocab))
        goto done;
    if ((size_t)header_pos.len != 5 * hlen * sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "header positions do not fit the header");
        goto done;
    }
    size_t cap = token_bound(&g, planes.buf, &o, hlen);
    ids = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(cap * sizeof(int32_t)));
    pos = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(cap * 5 * sizeof(int32_t)));
    if (!ids || !pos) goto done;
    size_t n;
    Py_BEGIN_ALLOW_THREADS
    n = emit_tokens(&g, planes.buf, &o, &v, header.buf, header_pos.buf, hlen,
                    (int32_t *)PyByteArray_AS_STRING(ids), (int32_t *)PyByteArray_AS_STRING(pos));
    Py_END_ALLOW_THREADS
    if (PyByteArray_Resize(ids, (Py_ssize_t)(n * sizeof(int32_t)))
        || PyByteArray_Resize(pos, (Py_ssize_t)(n * 5 * sizeof(int32_t))))
        goto done;
    PyBuffer_Release(&planes); PyBuffer_Release(&rows); PyBuffer_Release(&header); PyBuffer_Release(&header_pos);
    return Py_BuildValue("(NN)", ids, pos);
done:
    Py_XDECREF(ids);
    Py_XDECREF(pos);
    PyBuffer_Release(&planes); PyBuffer_Release(&rows); PyBuffer_Release(&header); PyBuffer_Release(&header_pos);
    return NULL;
}

static PyObject *py_coefficients(PyObject *self, PyObject *args) {
    Py_buffer ids, rows;
    Py_ssize_t start;
    int height, width, raster;
    PyObject *hv, *bands, *vocab, *planes = NULL;
    if (!PyArg_ParseTuple(args, "y*niiOy*iOO", &ids, &start, &height, &width, &hv, &rows, &raster, &bands, &vocab))
        return NULL;
    Geometry g;
    Order o;
    VocabIds v;
    const char *why = NULL;
    size_t n_ids = (size_t)ids.len / sizeof(int32_t);
    if (parse_geometry(&g, height, width, hv) || parse_order(&o, &rows, raster, bands) || parse_vocab(&v, vocab))
        goto done;
    if (start < 0 || (size_t)start > n_ids) {
        PyErr_SetString(PyExc_ValueError, "start outside the stream");
        goto done;
    }
    if (n_ids - (size_t)start < (raster ? 2 : 1) * o.n + 1) {   /* too short: don't allocate planes */
        why = "stream too short for its geometry";
        goto done;
    }
    planes = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)planes_size(&g));
    if (!planes) goto done;
    Py_BEGIN_ALLOW_THREADS
    memset(PyByteArray_AS_STRING(planes), 0, planes_size(&g));
    why = parse_tokens(&g, (const int32_t *)ids.buf + start, n_ids - (size_t)start, &o, &v,
                       (int16_t *)PyByteArray_AS_STRING(planes));
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&rows);
    if (PyErr_Occurred()) {
        Py_XDECREF(planes);
        return NULL;
    }
    if (why) {
        Py_XDECREF(planes);
        return PyUnicode_FromString(why);
    }
    return planes;
}

static PyObject *py_write(PyObject *self, PyObject *args) {
    Py_buffer planes, tables;
    int height, width;
    PyObject *hv, *table_of_t, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*iiOy*O", &planes, &height, &width, &hv, &tables, &table_of_t)) return NULL;
    Geometry g;
    int table_of[MAX_COMP];
    Py_ssize_t n_tables = tables.len / (Py_ssize_t)(64 * sizeof(uint16_t));
    if (parse_geometry(&g, height, width, hv) || check_planes(&planes, &g)) goto done;
    if (!PyTuple_Check(table_of_t) || PyTuple_GET_SIZE(table_of_t) != g.n) {
        PyErr_SetString(PyExc_ValueError, "table_of: one table slot per component");
        goto done;
    }
    for (int c = 0; c < g.n; c++) {
        table_of[c] = (int)PyLong_AsLong(PyTuple_GET_ITEM(table_of_t, c));
        if (table_of[c] < 0 || table_of[c] >= n_tables || table_of[c] > c) {
            PyErr_SetString(PyExc_ValueError, "table_of: slots in order of first use, each defined");
            goto done;
        }
    }
    const uint16_t(*tab)[64] = (const uint16_t(*)[64])tables.buf;
    for (Py_ssize_t s = 0; s < n_tables; s++)
        for (int k = 0; k < 64; k++)
            if (tab[s][k] < 1 || tab[s][k] > 255) {
                result = PyUnicode_FromString("quantization table entry outside 1..255");
                goto done;
            }
    if (g.height > 65500 || g.width > 65500) {
        result = PyUnicode_FromString("image larger than libjpeg's 65500 pixels");
        goto done;
    }
    uint8_t *out = NULL;
    size_t out_len = 0;
    const char *why;
    Py_BEGIN_ALLOW_THREADS
    why = write_jpeg(&g, planes.buf, tab, table_of, &out, &out_len);
    Py_END_ALLOW_THREADS
    if (why) result = PyUnicode_FromString(why);
    else {
        result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len);
        free(out);
    }
done:
    PyBuffer_Release(&planes);
    PyBuffer_Release(&tables);
    return result;
}

static PyObject *py_accepts(PyObject *self, PyObject *args) {
    Py_buffer pieces, offsets, order, lcp, units;
    PyObject *state, *ctx, *vocab, *out = NULL;
    GState S = {0};
    GCtx C = {0};
    PyObject *pend, *esc, *dc, *lo, *hi;
    if (!PyArg_ParseTuple(args, "y*y*y*y*OOy*O", &pieces, &offsets, &order, &lcp, &state, &ctx, &units, &vocab))
        return NULL;
    if (!PyArg_ParseTuple(state, "iiiiiOOO", &S.u, &S.k, &S.after_zrl, &S.no_skip, &S.done, &pend, &esc, &dc)
        || !PyArg_ParseTuple(ctx, "iiiiOO", &C.n_blocks, &C.raster, &C.max_skip, &C.ac_max, &lo, &hi)
        || parse_vocab(&C.v, vocab))
        goto done;
    Py_ssize_t n_dc = PySequence_Size(dc);
    if (n_dc < 1 || n_dc > MAX_COMP || PySequence_Size(lo) != n_dc || PySequence_Size(hi) != n_dc
        || PySequence_Size(pend) > 2 || units.len % (3 * (Py_ssize_t)sizeof(int32_t))) {
        PyErr_SetString(PyExc_ValueError, "accepts: bad state");
        goto done;
    }
    for (Py_ssize_t c = 0; c < n_dc; c++) {
        PyObject *x = PySequence_GetItem(dc, c), *l = PySequence_GetItem(lo, c), *h = PySequence_GetItem(hi, c);
        S.dc[c] = x ? PyLong_AsLong(x) : 0;
        C.dc_lo[c] = l ? PyLong_AsLong(l) : 0;
        C.dc_hi[c] = h ? PyLong_AsLong(h) : 0;
        Py_XDECREF(x); Py_XDECREF(l); Py_XDECREF(h);
    }
    S.n_pending = (int)PySequence_Size(pend);        /* ((lo, hi), ...) per escape byte to come */
    for (int i = 0; i < S.n_pending; i++) {
        PyObject *x = PySequence_GetItem(pend, i);
        if (!x || !PyArg_ParseTuple(x, "ii", &S.pending_lo[i], &S.pending_hi[i])) {
            Py_XDECREF(x);
            goto done;
        }
        Py_DECREF(x);
    }
    if (esc != Py_None && !PyArg_ParseTuple(esc, "iil", &S.esc_comp, &S.esc_sign, &S.esc_payload)) goto done;
    S.esc_active = esc != Py_None;
    if (PyErr_Occurred()) goto done;
    C.units = units.buf;
    C.n_units = (int)(units.len / (3 * (Py_ssize_t)sizeof(int32_t)));
    Py_ssize_t n = offsets.len / (Py_ssize_t)sizeof(int32_t) - 1;
    const int32_t *off = offsets.buf, *ord = order.buf;
    int bad = n < 0 || order.len != n * (Py_ssize_t)sizeof(int32_t) || lcp.len != order.len
              || off[n] * (Py_ssize_t)sizeof(int32_t) > pieces.len;
    for (Py_ssize_t i = 0; !bad && i < n; i++)
        bad = ord[i] < 0 || ord[i] >= n || off[i] > off[i + 1] || ((const int32_t *)lcp.buf)[i] < 0;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "accepts: offsets, order or lcp do not fit the pieces");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (off[i + 1] - off[i] > MAX_PIECE) {                 /* not for this port: the caller walks */
            out = Py_NewRef(Py_None);
            goto done;
        }
    out = PyByteArray_FromStringAndSize(NULL, n);
    if (!out) goto done;
    char *m = PyByteArray_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    accepts_sorted(&C, &S, pieces.buf, off, ord, lcp.buf, (size_t)n, m);
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&pieces);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&order);
    PyBuffer_Release(&lcp);
    PyBuffer_Release(&units);
    return out;
}

static PyMethodDef methods[] = {
    {"read", py_read, METH_VARARGS, "read(jpeg) -> (height, width, hv, qtables, planes, shapes) | reason"},
    {"tokens", py_tokens, METH_VARARGS,
     "tokens(planes, height, width, hv, order, raster, bands, vocab, header, header_pos) -> (ids, pos)"},
    {"coefficients", py_coefficients, METH_VARARGS,
     "coefficients(ids, start, height, width, hv, order, raster, bands, vocab) -> planes | reason"},
    {"write", py_write, METH_VARARGS, "write(planes, height, width, hv, tables, table_of) -> jpeg | reason"},
    {"accepts", py_accepts, METH_VARARGS,
     "accepts(pieces, offsets, order, lcp, state, ctx, units, vocab) -> mask | None: which sequences a cursor "
     "takes (None: a sequence is too long for this port)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", "The compiled JPEG path (see scan.py).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
