/* Coefficient planes <-> JPEG-DCT token ids, one block at a time in a stream's block order.
 *
 * The same token format as tokenizer/jpeg/codec.py (which stays the reference): per block a DC
 * difference token, AC(run, value) tokens with ZRL for 16 zeros, EOB; escapes carry two byte tokens;
 * coarse_to_fine puts every DC first, then each band over all blocks with SKIP(n) over empty blocks. */
#include "_scan.h"

typedef struct {
    int32_t *ids, *pos;
    size_t n;
} Out;

static inline void put(Out *o, int id, const int32_t *blk, int freq) {
    int32_t *p = o->pos + 5 * o->n;
    o->ids[o->n++] = id;
    p[0] = 0;
    p[1] = blk[0] + 1;     /* component + 1 (0 is the header's) */
    p[2] = blk[3];         /* row, col in luma-block units */
    p[3] = blk[4];
    p[4] = freq;
}

/* |value| - direct - 1 as two byte tokens */
static inline void put_escape(Out *o, const VocabIds *v, int value, int direct, const int32_t *blk, int freq) {
    int rest = (value < 0 ? -value : value) - direct - 1;
    put(o, v->byte + (rest >> 8), blk, freq);
    put(o, v->byte + (rest & 255), blk, freq);
}

static inline size_t block_index(const Geometry *g, const int32_t *blk) {
    const Plane *P = &g->c[blk[0]];
    return P->first + (size_t)blk[1] * P->pcols + (size_t)blk[2];
}

static inline uint64_t band_mask(int s, int e) {
    return (e >= 64 ? ~0ull : (1ull << e) - 1) & ~((1ull << s) - 1);
}

static void put_dc(Out *o, const VocabIds *v, int diff, const int32_t *blk) {
    int r = v->dc_range;
    if (diff > r || diff < -r) {
        put(o, v->dc + 2 * r + 1 + (diff < 0), blk, 0);
        put_escape(o, v, diff, r, blk, 0);
    } else {
        put(o, v->dc + diff + r, blk, 0);
    }
}

/* AC tokens of one block's band [s, e) (its nonzeros `m`), then EOB. */
static void put_band(Out *o, const VocabIds *v, const int16_t *x, uint64_t m, int s, const int32_t *blk) {
    int prev = s - 1, a = v->ac_range;
    while (m) {
        int k = __builtin_ctzll(m);
        m &= m - 1;
        int run = k - prev - 1;
        for (; run >= 16; run -= 16) {
            prev += 16;
            put(o, v->zrl, blk, prev);
        }
        int value = x[k], mag = value < 0 ? -value : value;
        int slot = mag > a ? 2 * a + (value < 0) : value > 0 ? mag - 1 : a + mag - 1;
        put(o, v->ac + run * v->ac_stride + slot, blk, k);
        if (mag > a) put_escape(o, v, value, a, blk, k);
        prev = k;
    }
    put(o, v->eob, blk, 64);
}

size_t token_bound(const Geometry *g, const int16_t *planes, const Order *o, size_t header_len) {
    const uint64_t *masks = plane_masks(g, planes);
    size_t n = header_len + 1;
    for (size_t b = 0; b < o->n; b++)     /* DC, AC (each maybe escaped), ZRL, EOB or SKIP per band */
        n += 3 + 3 * (size_t)__builtin_popcountll(masks[block_index(g, o->rows + 5 * b)]) + 3 + (size_t)o->n_bands;
    return n;
}

size_t emit_tokens(const Geometry *g, const int16_t *planes, const Order *o, const VocabIds *v,
                   const int32_t *header, const int32_t *header_pos, size_t header_len,
                   int32_t *ids, int32_t *pos) {
    const uint64_t *masks = plane_masks(g, planes);
    Out out = {ids, pos, header_len};
    for (size_t i = 0; i < header_len; i++) ids[i] = header[i];
    for (size_t i = 0; i < 5 * header_len; i++) pos[i] = header_pos[i];
    int pred[MAX_COMP] = {0};
    for (size_t b = 0; b < o->n; b++) {
        const int32_t *blk = o->rows + 5 * b;
        size_t at = block_index(g, blk);
        const int16_t *x = planes + 64 * at;
        put_dc(&out, v, x[0] - pred[blk[0]], blk);
        pred[blk[0]] = x[0];
        if (o->raster) put_band(&out, v, x, masks[at] & ~1ull, 1, blk);
    }
    for (int i = 0; !o->raster && i < o->n_bands; i++) {
        int s = o->bands[i];
        uint64_t bm = band_mask(s, o->bands[i + 1]);
        size_t empty = 0;       /* blocks of the current run with nothing in this band */
        for (size_t b = 0; b <= o->n; b++) {
            size_t at = b < o->n ? block_index(g, o->rows + 5 * b) : 0;
            uint64_t m = b < o->n ? masks[at] & bm : 0;
            if (b < o->n && !m) { empty++; continue; }
            for (size_t first = b - empty; empty; ) {     /* SKIP(n), greedy, n <= max_skip */
                size_t n = empty < (size_t)v->max_skip ? empty : (size_t)v->max_skip;
                put(&out, v->skip + (int)n - 1, o->rows + 5 * first, s);
                first += n;
                empty -= n;
            }
            if (b < o->n) put_band(&out, v, planes + 64 * at, m, s, o->rows + 5 * b);
        }
    }
    out.ids[out.n] = v->eos;
    for (int j = 0; j < 5; j++) out.pos[5 * out.n + j] = 0;
    out.pos[5 * out.n + 4] = 7;       /* HEADER_LEN: the end token's frequency field */
    return out.n + 1;
}

/* -- ids -> planes ------------------------------------------------------------------------------- */

typedef struct {
    const int32_t *ids;
    size_t n, i;
    const VocabIds *v;
    uint64_t inv_stride;   /* ceil(2^32 / ac_stride): run = id offset / stride without a division */
} In;

/* the value an escape's two byte tokens carry: payload + 1 + direct, signed; 0 if malformed */
static inline int take_escape(In *in, int sign, int direct) {
    const VocabIds *v = in->v;
    if (in->i + 2 > in->n) return 0;
    int hi = in->ids[in->i] - v->byte, lo = in->ids[in->i + 1] - v->byte;
    if (hi < 0 || hi > 255 || lo < 0 || lo > 255) return 0;
    in->i += 2;
    return sign * ((hi << 8 | lo) + 1 + direct);
}

/* AC tokens of band [s, e) of one block, through its EOB; 0 on anything the reference would refuse
 * (or anything unusual: the reference decoder then decides). */
static int take_band(In *in, int16_t *x, uint64_t *mask, int s, int e) {
    const VocabIds *v = in->v;
    int k = s, a = v->ac_range;
    while (in->i < in->n) {
        int t = in->ids[in->i++];
        if (t == v->eob) return 1;
        if (t == v->zrl) {
            if ((k += 16) > e) return 0;
            continue;
        }
        if (t < v->ac || t >= v->zrl) return 0;
        int run = (int)(((uint64_t)(t - v->ac) * in->inv_stride) >> 32), slot = t - v->ac - run * v->ac_stride;
        int value;
        if (slot < a) value = slot + 1;
        else if (slot < 2 * a) value = -(slot - a + 1);
        else if (!(value = take_escape(in, slot == 2 * a ? 1 : -1, a))) return 0;
        if ((k += run) >= e || value > 32767 || value < -32768) return 0;
        *mask |= 1ull << k;
        x[k++] = (int16_t)value;
    }
    return 0;
}

static int take_dc(In *in, int16_t *x, uint64_t *mask, long *pred) {
    const VocabIds *v = in->v;
    if (in->i >= in->n) return 0;
    int t = in->ids[in->i++], r = v->dc_range;
    long diff;
    if (t >= v->dc && t <= v->dc + 2 * r) diff = t - v->dc - r;
    else if (t == v->dc + 2 * r + 1 || t == v->dc + 2 * r + 2) {
        if (!(diff = take_escape(in, t == v->dc + 2 * r + 1 ? 1 : -1, r))) return 0;
    } else return 0;
    *pred += diff;
    if (*pred > 32767 || *pred < -32768) return 0;
    x[0] = (int16_t)*pred;
    *mask |= *pred != 0;
    return 1;
}

const char *parse_tokens(const Geometry *g, const int32_t *ids, size_t n, const Order *o,
                         const VocabIds *v, int16_t *planes) {
    if (n < 1 || ids[n - 1] != v->eos) return "stream does not end with EOS";
    uint64_t *masks = plane_masks(g, planes);
    In in = {ids, n - 1, 0, v, ((1ull << 32) + (uint64_t)v->ac_stride - 1) / (uint64_t)v->ac_stride};
    long pred[MAX_COMP] = {0};
    for (size_t b = 0; b < o->n; b++) {
        const int32_t *blk = o->rows + 5 * b;
        size_t at = block_index(g, blk);
        if (!take_dc(&in, planes + 64 * at, &masks[at], &pred[blk[0]])) return "bad DC token";
        if (o->raster && !take_band(&in, planes + 64 * at, &masks[at], 1, 64)) return "bad AC tokens";
    }
    for (int i = 0; !o->raster && i < o->n_bands; i++) {
        for (size_t b = 0; b < o->n;) {
            if (in.i >= in.n) return "stream ends inside a band";
            int t = ids[in.i];
            if (t >= v->skip && t < v->skip + v->max_skip) {
                in.i++;
                if ((b += (size_t)(t - v->skip + 1)) > o->n) return "SKIP past the end of a band";
                continue;
            }
            size_t at = block_index(g, o->rows + 5 * b);
            if (!take_band(&in, planes + 64 * at, &masks[at], o->bands[i], o->bands[i + 1])) return "bad AC tokens";
            b++;
        }
    }
    return in.i == in.n ? NULL : "tokens after the last block";
}
