/* JPEG file -> quantized coefficients, straight from the Huffman-coded scans (no libjpeg).
 *
 * Takes baseline and extended sequential Huffman JPEGs (SOF0/SOF1, 8-bit, 1 or 3 components,
 * interleaved or not, restart markers). It must never take a file on which libjpeg would give other
 * coefficients or an error, so it refuses (returns a reason) whenever the file leaves the well-trodden
 * path: junk between segments, a bad Huffman code, data running into a marker, a wrong restart marker,
 * a missing EOI, coefficients outside 8-bit JPEG's range, fill bytes inside scan data, ... The caller
 * then uses the reference path (libjpeg), which gives the answer or the error. */
#include <stdlib.h>
#include <string.h>

#include "_scan.h"

#define LOOKAHEAD 9      /* bits of the symbol lookup table */
#define AC_BITS 10       /* bits of the AC lookup table: code and value bits together */

typedef struct {
    int defined;
    uint8_t counts[17], vals[256];
    int nvals;
    /* derived at the start of a scan */
    uint16_t fast[1 << LOOKAHEAD];   /* (length << 8 | symbol) of codes up to LOOKAHEAD bits, 0: longer */
    uint32_t ac[1 << AC_BITS];       /* AC symbol and value in AC_BITS bits, 0: longer; see derive_ac */
    int32_t maxcode[18], valoff[17];
} Huff;

typedef struct {
    const uint8_t *p, *end;   /* next unread byte of entropy data */
    uint64_t buf;             /* `bits` unread bits, right-aligned */
    int bits, pad;            /* pad: zero bits appended past a marker (the lowest bits of buf) */
    int marker;               /* marker byte that stopped reading; -1: end of file; 0: none yet */
    int fill;                 /* saw FF FF inside entropy data */
} Bits;

/* The AC table: for a code and its value bits that fit AC_BITS, (value << 16 | 0x1000 if the symbol
 * has no value (EOB, ZRL) | run << 8 | bits used). */
static void derive_ac(Huff *t) {
    memset(t->ac, 0, sizeof t->ac);
    for (int l = 1, k = 0, code = 0; l <= AC_BITS; l++, code <<= 1)
        for (int i = 0; i < t->counts[l]; i++, k++, code++) {
            int r = t->vals[k] >> 4, s = t->vals[k] & 15;
            if (s > 10 || l + s > AC_BITS) continue;       /* left to the slow path */
            for (int x = 0; x < (1 << s); x++) {
                int value = s == 0 ? 0 : x < (1 << (s - 1)) ? x - (1 << s) + 1 : x;
                uint32_t e = (uint32_t)(uint16_t)value << 16 | (s ? 0 : 0x1000u) | (uint32_t)r << 8 | (uint32_t)(l + s);
                int shift = AC_BITS - l - s, first = (code << s | x) << shift;
                for (int j = 0; j < (1 << shift); j++) t->ac[first + j] = e;
            }
        }
}

/* libjpeg's jpeg_make_d_derived_tbl, refusing what it refuses. */
static const char *derive(Huff *t, int is_dc) {
    int code = 0;
    memset(t->fast, 0, sizeof t->fast);
    for (int l = 1, k = 0; l <= 16; l++) {
        t->valoff[l] = k - code;
        for (int i = 0; i < t->counts[l]; i++, k++, code++) {
            if (code >= (1 << l)) return "bad Huffman table (code overflow)";
            if (l <= LOOKAHEAD) {
                int shift = LOOKAHEAD - l;
                for (int j = 0; j < (1 << shift); j++)
                    t->fast[(code << shift) | j] = (uint16_t)(l << 8 | t->vals[k]);
            }
        }
        t->maxcode[l] = t->counts[l] ? code - 1 : -1;
        if (code >= (1 << l)) return "bad Huffman table (all-ones code)";
        code <<= 1;
    }
    t->maxcode[17] = 0x7FFFFFFF;
    if (is_dc)
        for (int i = 0; i < t->nvals; i++)
            if (t->vals[i] > 15) return "bad DC Huffman table (symbol > 15)";
    if (!is_dc) derive_ac(t);
    return NULL;
}

static inline int next_byte(Bits *b) {
    if (b->marker) { b->pad += 8; return 0; }
    if (b->p >= b->end) { b->marker = -1; b->pad += 8; return 0; }
    int c = *b->p;
    if (c != 0xFF) { b->p++; return c; }
    if (b->p + 1 >= b->end) { b->marker = -1; b->pad += 8; return 0; }
    int d = b->p[1];
    if (d == 0) { b->p += 2; return 0xFF; }
    if (d == 0xFF) b->fill = 1;
    b->marker = d;          /* b->p stays on the marker's FF */
    b->pad += 8;
    return 0;
}

static inline void refill(Bits *b) {
    if (!b->marker && b->end - b->p >= 8) {     /* common case: plain bytes, no FF among them */
        while (b->bits <= 56 && *b->p != 0xFF) {
            b->buf = b->buf << 8 | *b->p++;
            b->bits += 8;
        }
    }
    while (b->bits <= 56) {
        b->buf = b->buf << 8 | (uint64_t)next_byte(b);
        b->bits += 8;
    }
}

static inline uint32_t peek(const Bits *b, int n) { return (uint32_t)(b->buf >> (b->bits - n)) & ((1u << n) - 1); }

/* One Huffman symbol; -1 on a code that is in no table (libjpeg: "bad Huffman code"). */
static inline int decode(Bits *b, const Huff *t) {
    if (b->bits < 32) refill(b);
    uint16_t f = t->fast[peek(b, LOOKAHEAD)];
    if (f) { b->bits -= f >> 8; return f & 0xFF; }
    for (int l = LOOKAHEAD + 1; l <= 16; l++) {
        int32_t code = (int32_t)peek(b, l);
        if (code <= t->maxcode[l]) { b->bits -= l; return t->vals[(t->valoff[l] + code) & 0xFF]; }
    }
    return -1;
}

static inline int receive_extend(Bits *b, int s) {
    if (s == 0) return 0;
    if (b->bits < s) refill(b);
    int x = (int)peek(b, s);
    b->bits -= s;
    return x < (1 << (s - 1)) ? x - (1 << s) + 1 : x;
}

/* One block, as libjpeg's decode_mcu_slow does it; coefficients into blk (zigzag), DC prediction in
 * *pred, which coefficients are nonzero into *mask. */
static const char *decode_block(Bits *b, const Huff *dc, const Huff *ac, int *pred, int16_t *blk,
                                uint64_t *mask) {
    int s = decode(b, dc);
    if (s < 0) return "bad Huffman code";
    if (s > 11) return "DC difference outside 8-bit JPEG's range";
    *pred += receive_extend(b, s);
    if (*pred < -1024 || *pred > 1023) return "DC outside 8-bit JPEG's range";
    blk[0] = (int16_t)*pred;
    uint64_t m = *pred != 0;
    for (int k = 1; k < 64; k++) {
        if (b->bits < 32) refill(b);
        uint32_t e = ac->ac[peek(b, AC_BITS)];
        int r;
        if (e) {                                    /* common case: symbol and value in one look */
            b->bits -= e & 31;
            r = e >> 8 & 15;
            if (e & 0x1000) {
                if (r != 15) break;
                k += 15;
                continue;
            }
            if ((k += r) > 63) return "AC run past the end of a block";
            blk[k] = (int16_t)(e >> 16);
            m |= 1ull << k;
            continue;
        }
        int rs = decode(b, ac);
        if (rs < 0) return "bad Huffman code";
        r = rs >> 4;
        s = rs & 15;
        if (s) {
            if ((k += r) > 63) return "AC run past the end of a block";
            if (s > 10) return "AC outside 8-bit JPEG's range";
            blk[k] = (int16_t)receive_extend(b, s);
            m |= 1ull << k;
        } else {
            if (r != 15) break;
            k += 15;
        }
    }
    *mask = m;
    return NULL;
}

/* What the markers have said so far. */
typedef struct {
    const uint8_t *end;                  /* of the file */
    Geometry *g;                         /* the frame's, once read */
    int *hv;                             /* its sampling factors (h, v) per component */
    PlaneAlloc alloc;
    void *ctx;
    int16_t *planes;
    int ids[MAX_COMP], tq[MAX_COMP], coded[MAX_COMP];   /* component ids, table slots, scans coding it */
    int qt_defined[4], restart, adobe, have_frame;
    uint16_t tables[4][64];              /* quantization tables by slot, zigzag */
    Huff dc[4], ac[4];
} Reader;

/* At the end of a restart interval or a scan: only the padding bits of the last byte may be left, and
 * the next thing must be a marker; returns it (0 if there is none). */
static int scan_end_marker(Bits *b) {
    if (b->fill || b->bits < b->pad || b->bits - b->pad >= 8) return 0;
    if (!b->marker) {
        if (b->end - b->p < 2 || b->p[0] != 0xFF || b->p[1] == 0 || b->p[1] == 0xFF) return 0;
        b->marker = b->p[1];
    }
    return b->marker > 0 ? b->marker : 0;
}


static const char *read_scan(Reader *R, const uint8_t **pp, const int *comps, int ns, const int *td,
                             const int *ta) {
    Geometry *g = R->g;
    const Plane *P0 = &g->c[comps[0]];
    long per_row = ns == 1 ? P0->cols : g->mcu_cols;
    long mcus = ns == 1 ? (long)P0->rows * P0->cols : (long)g->mcu_rows * g->mcu_cols;
    Huff *dc[MAX_COMP], *ac[MAX_COMP];
    for (int i = 0; i < ns; i++) {
        dc[i] = &R->dc[td[i]];
        ac[i] = &R->ac[ta[i]];
        if (!dc[i]->defined || !ac[i]->defined) return "scan uses an undefined Huffman table";
        const char *why = derive(dc[i], 1);
        if (!why) why = derive(ac[i], 0);
        if (why) return why;
    }
    Bits b = {*pp, R->end, 0, 0, 0, 0, 0};
    int pred[MAX_COMP] = {0}, rst = 0;
    for (long m = 0; m < mcus; m++) {
        if (R->restart && m && m % R->restart == 0) {        /* restart marker: reset bits and DC */
            if (scan_end_marker(&b) != 0xD0 + (rst & 7)) return "missing or wrong restart marker";
            rst++;
            b = (Bits){b.p + 2, R->end, 0, 0, 0, 0, 0};
            memset(pred, 0, sizeof pred);
        }
        long my = m / per_row, mx = m % per_row;
        for (int i = 0; i < ns; i++) {
            const Plane *P = &g->c[comps[i]];
            int h = ns == 1 ? 1 : P->h, v = ns == 1 ? 1 : P->v;
            for (int dv = 0; dv < v; dv++)
                for (int dh = 0; dh < h; dh++) {
                    size_t at = P->first + (size_t)(my * v + dv) * P->pcols + (size_t)(mx * h + dh);
                    const char *why = decode_block(&b, dc[i], ac[i], &pred[i], R->planes + 64 * at,
                                                   plane_masks(g, R->planes) + at);
                    if (why) return why;
                }
        }
        if (b.bits < b.pad || b.fill) return "scan data runs into a marker or the end of the file";
    }
    int marker = scan_end_marker(&b);
    if (!marker || (marker >= 0xD0 && marker <= 0xD7)) return "scan does not end cleanly at a marker";
    *pp = b.p;
    return NULL;
}

static const char *read_sof(Reader *R, const uint8_t *s, int len) {
    if (R->have_frame) return "more than one frame header";
    if (len < 6) return "short frame header";
    int n = s[5];
    if (len != 6 + 3 * n) return "frame header length";
    if (s[0] != 8) return "not 8-bit";
    if (n != 1 && n != 3) return "not 1 or 3 components";
    int height = s[1] << 8 | s[2], width = s[3] << 8 | s[4];
    if (height == 0 || width == 0 || height > 65500 || width > 65500) return "image size";
    for (int c = 0; c < n; c++) {
        R->ids[c] = s[6 + 3 * c];
        R->hv[2 * c] = n == 1 ? 1 : s[7 + 3 * c] >> 4;
        R->hv[2 * c + 1] = n == 1 ? 1 : s[7 + 3 * c] & 15;
        R->tq[c] = s[8 + 3 * c];
        if (R->tq[c] > 3) return "quantization table index";
        for (int d = 0; d < c; d++)
            if (R->ids[d] == R->ids[c]) return "duplicate component id";
    }
    if (n == 3) {   /* chroma 1x1, luma 1x1, 2x2, 2x1 or 1x2: the layouts tokenizer.jpeg.io names */
        int h = R->hv[0], v = R->hv[1];
        if (R->hv[2] != 1 || R->hv[3] != 1 || R->hv[4] != 1 || R->hv[5] != 1 || h < 1 || h > 2 || v < 1 || v > 2)
            return "sampling factors without a name";
    }
    if (geometry(R->g, height, width, n, R->hv)) return "sampling factors";
    R->planes = R->alloc(R->ctx, planes_size(R->g));
    if (!R->planes) return "out of memory";
    R->have_frame = 1;
    return NULL;
}

static const char *read_dqt(Reader *R, const uint8_t *s, int len) {
    for (int j = 0; j < len;) {
        int pq = s[j] >> 4, tq = s[j] & 15, size = pq ? 128 : 64;
        if (pq > 1 || tq > 3 || j + 1 + size > len) return "bad quantization table";
        for (int k = 0; k < 64; k++)
            R->tables[tq][k] = pq ? (uint16_t)(s[j + 1 + 2 * k] << 8 | s[j + 2 + 2 * k]) : s[j + 1 + k];
        R->qt_defined[tq] = 1;
        j += 1 + size;
    }
    return NULL;
}

static const char *read_dht(Reader *R, const uint8_t *s, int len) {
    for (int j = 0; j < len;) {
        if (j + 17 > len) return "bad Huffman table";
        int tc = s[j] >> 4, th = s[j] & 15, count = 0;
        if (tc > 1 || th > 3) return "bad Huffman table index";
        Huff *t = tc ? &R->ac[th] : &R->dc[th];
        t->counts[0] = 0;
        for (int l = 1; l <= 16; l++) count += t->counts[l] = s[j + l];
        if (count > 256 || j + 17 + count > len) return "bad Huffman table";
        memcpy(t->vals, s + j + 17, (size_t)count);
        t->nvals = count;
        t->defined = 1;
        j += 17 + count;
    }
    return NULL;
}

static const char *read_sos(Reader *R, const uint8_t *s, int len, const uint8_t **pp) {
    if (!R->have_frame) return "scan before the frame header";
    int ns = len ? s[0] : 0, comps[MAX_COMP], td[MAX_COMP], ta[MAX_COMP];
    if (ns < 1 || ns > R->g->n || len != 4 + 2 * ns) return "scan header length";
    for (int i = 0; i < ns; i++) {
        int c = 0;
        while (c < R->g->n && R->ids[c] != s[1 + 2 * i]) c++;
        if (c == R->g->n) return "scan names an unknown component";
        for (int d = 0; d < i; d++)
            if (comps[d] == c) return "component twice in a scan";
        if (R->coded[c]++) return "component coded by two scans";
        if (!R->qt_defined[R->tq[c]]) return "quantization table not defined before the scan";
        comps[i] = c;
        td[i] = s[2 + 2 * i] >> 4;
        ta[i] = s[2 + 2 * i] & 15;
        if (td[i] > 3 || ta[i] > 3) return "Huffman table index";
    }
    const uint8_t *q = s + 1 + 2 * ns;
    if (q[0] != 0 || q[1] != 63 || q[2] != 0) return "not a sequential scan";
    return read_scan(R, pp, comps, ns, td, ta);
}

const char *read_jpeg(const uint8_t *data, size_t len, Geometry *g, int hv[2 * MAX_COMP],
                      uint16_t qt[MAX_COMP][64], PlaneAlloc alloc, void *ctx) {
    Reader *R = calloc(1, sizeof(Reader));
    if (!R) return "out of memory";
    R->end = data + len; R->g = g; R->hv = hv;
    R->alloc = alloc; R->ctx = ctx; R->adobe = -1;
    const char *why = NULL;
    const uint8_t *p = data + 2;
    if (len < 4 || data[0] != 0xFF || data[1] != 0xD8) why = "no SOI";
    while (!why) {
        if (R->end - p < 2 || p[0] != 0xFF) { why = "junk between segments or no EOI"; break; }
        while (p < R->end && *p == 0xFF) p++;           /* fill bytes before a marker */
        if (p >= R->end) { why = "no EOI"; break; }
        int m = *p++;
        if (m == 0xD9) break;
        if (R->end - p < 2) { why = "truncated segment"; break; }
        int seglen = (p[0] << 8 | p[1]) - 2;
        const uint8_t *s = p + 2;
        if (seglen < 0 || R->end - s < seglen) { why = "truncated segment"; break; }
        p = s + seglen;
        if (m == 0xC0 || m == 0xC1) why = read_sof(R, s, seglen);
        else if (m == 0xDB) why = read_dqt(R, s, seglen);
        else if (m == 0xC4) why = read_dht(R, s, seglen);
        else if (m == 0xDA) why = read_sos(R, s, seglen, &p);
        else if (m == 0xDD) {
            if (seglen != 2) why = "restart interval length";
            else R->restart = s[0] << 8 | s[1];
        } else if (m == 0xEE && seglen >= 12 && memcmp(s, "Adobe", 5) == 0) R->adobe = s[11];
        else if (!((m >= 0xE0 && m <= 0xEF) || m == 0xFE)) why = "a marker the compiled path does not read";
    }
    if (!why && !R->have_frame) why = "no frame";
    for (int c = 0; !why && c < g->n; c++) {
        if (!R->coded[c]) why = "a component is in no scan";
        else if (!R->qt_defined[R->tq[c]]) why = "quantization table not defined";
        else memcpy(qt[c], R->tables[R->tq[c]], sizeof qt[c]);
        for (int k = 0; !why && k < 64; k++)
            if (qt[c][k] == 0 || qt[c][k] > 255) why = "quantization table entry outside 1..255";
    }
    if (!why && g->n == 3 && R->adobe == 0) why = "RGB (Adobe transform 0)";
    free(R);
    return why;
}
