/* Coefficient planes -> a baseline JPEG file with optimized Huffman tables, byte for byte the file
 * libjpeg-turbo writes from the same coefficients (tokenizer.jpeg.io.write_coefficients, the reference:
 * jpeg_write_coefficients with optimize_coding through jpeglib). Two passes over the one interleaved
 * scan, as libjpeg's: symbol counts, then libjpeg's jpeg_gen_optimal_table, then the coded data.
 * MCU padding blocks are coded as libjpeg codes them: the previous block's DC, no AC. */
#include <stdlib.h>
#include <string.h>

#include "_scan.h"

typedef struct {
    uint8_t bits[17], vals[256];
    int nvals;
    uint16_t code[256];
    uint8_t size[256];
} Table;

static inline int nbits(int x) { return x ? 32 - __builtin_clz((unsigned)(x < 0 ? -x : x)) : 0; }

/* libjpeg's jpeg_gen_optimal_table (JPEG standard section K.2), ties and all. -1 if a code would be
 * longer than 32 bits (libjpeg: JERR_HUFF_CLEN_OVERFLOW). */
static int gen_optimal_table(long freq[257], Table *t) {
    int bits[33] = {0}, codesize[257] = {0}, others[257];
    for (int i = 0; i < 257; i++) others[i] = -1;
    freq[256] = 1;                  /* a pseudo-symbol, so no real symbol gets the all-ones code */
    int live[257], n = 0;           /* symbols with a nonzero count, ascending: libjpeg scans all 257 */
    for (int i = 0; i <= 256; i++)
        if (freq[i]) live[n++] = i;
    for (;;) {
        /* the smallest count (c1), then the next smallest (c2); ties go to the larger symbol */
        int a = -1, b = -1;
        long v = 1000000000L;
        for (int j = 0; j < n; j++)
            if (freq[live[j]] <= v) { v = freq[live[j]]; a = j; }
        v = 1000000000L;
        for (int j = 0; j < n; j++)
            if (j != a && freq[live[j]] <= v) { v = freq[live[j]]; b = j; }
        if (b < 0) break;
        int c1 = live[a], c2 = live[b];
        freq[c1] += freq[c2];
        freq[c2] = 0;
        memmove(live + b, live + b + 1, (size_t)(n - b - 1) * sizeof(int));
        n--;
        codesize[c1]++;
        while (others[c1] >= 0) { c1 = others[c1]; codesize[c1]++; }
        others[c1] = c2;
        codesize[c2]++;
        while (others[c2] >= 0) { c2 = others[c2]; codesize[c2]++; }
    }
    for (int i = 0; i <= 256; i++)
        if (codesize[i]) {
            if (codesize[i] > 32) return -1;
            bits[codesize[i]]++;
        }
    for (int i = 32; i > 16; i--)          /* no code longer than 16 bits */
        while (bits[i] > 0) {
            int j = i - 2;
            while (bits[j] == 0) j--;
            bits[i] -= 2;
            bits[i - 1]++;
            bits[j + 1] += 2;
            bits[j]--;
        }
    int i = 16;
    while (bits[i] == 0) i--;
    bits[i]--;                             /* drop the pseudo-symbol */
    for (int l = 0; l <= 16; l++) t->bits[l] = (uint8_t)bits[l];
    /* symbols by (code size before the length limit, symbol): a counting sort */
    int at[34] = {0};
    for (int j = 0; j <= 255; j++) at[codesize[j] + 1]++;
    for (int l = 1; l <= 33; l++) at[l] += at[l - 1];
    int unused = at[1];                     /* symbols without a code come first: skip them */
    t->nvals = 256 - unused;
    for (int j = 0; j <= 255; j++)
        if (codesize[j]) t->vals[at[codesize[j]]++ - unused] = (uint8_t)j;
    /* canonical codes, as jpeg_make_c_derived_tbl */
    memset(t->size, 0, sizeof t->size);
    int code = 0, k = 0;
    for (int l = 1; l <= 16; l++, code <<= 1)
        for (int n = 0; n < t->bits[l]; n++, k++, code++) {
            t->code[t->vals[k]] = (uint16_t)code;
            t->size[t->vals[k]] = (uint8_t)l;
        }
    return 0;
}

typedef struct {
    uint8_t *p;
    uint64_t acc;      /* n pending bits, right-aligned */
    int n;
} Put;

static inline void put_byte(Put *w, uint8_t c) {
    *w->p++ = c;
    if (c == 0xFF) *w->p++ = 0;        /* byte stuffing */
}

/* size <= 32 bits; whole 32-bit words go out at once unless one of their bytes is FF */
static inline void put_bits(Put *w, uint32_t code, int size) {
    w->acc = w->acc << size | code;
    w->n += size;
    if (w->n >= 32) {
        w->n -= 32;
        uint32_t word = (uint32_t)(w->acc >> w->n), x = ~word;
        if ((x - 0x01010101u) & ~x & 0x80808080u) {
            for (int s = 24; s >= 0; s -= 8) put_byte(w, (uint8_t)(word >> s));
        } else {
            w->p[0] = (uint8_t)(word >> 24); w->p[1] = (uint8_t)(word >> 16);
            w->p[2] = (uint8_t)(word >> 8); w->p[3] = (uint8_t)word;
            w->p += 4;
        }
    }
}

/* Symbols of the scan in coding order, each (table << 23 | symbol << 15 | nbits << 11 | bits); tables
 * 0, 1 DC, 2, 3 AC. Counts per table into freq. -1 on a value baseline JPEG cannot code. */
static long gather(const Geometry *g, const int16_t *planes, const Slot *slots, size_t n_slots,
                   long freq[4][257], uint32_t *out) {
    const uint64_t *masks = plane_masks(g, planes);
    int last[MAX_COMP] = {0};
    uint32_t *o = out;
#define SYM(t, sym, nb, bits) (freq[t][sym]++, *o++ = (uint32_t)(t) << 23 | (uint32_t)(sym) << 15 | \
                               (uint32_t)(nb) << 11 | ((uint32_t)(bits) & ((1u << (nb)) - 1)))
    for (size_t i = 0; i < n_slots; i++) {
        int c = slots[i].comp, t = c ? 1 : 0;
        const int16_t *x = planes + 64 * (size_t)slots[i].block;
        int dummy = slots[i].dummy, diff = dummy ? 0 : x[0] - last[c];
        uint64_t m = dummy ? 0 : masks[slots[i].block] & ~1ull;
        if (!dummy) last[c] = x[0];
        int nb = nbits(diff);
        if (nb > 11) return -1;                    /* libjpeg: JERR_BAD_DCT_COEF */
        SYM(t, nb, nb, diff < 0 ? diff - 1 : diff);
        int prev = 0;
        while (m) {
            int k = __builtin_ctzll(m);
            m &= m - 1;
            int r = k - prev - 1;
            for (; r > 15; r -= 16) SYM(t + 2, 0xF0, 0, 0);
            int value = x[k];
            nb = nbits(value);
            if (nb > 10) return -1;
            SYM(t + 2, r << 4 | nb, nb, value < 0 ? value - 1 : value);
            prev = k;
        }
        if (prev < 63) SYM(t + 2, 0, 0, 0);    /* EOB */
    }
#undef SYM
    return o - out;
}

static uint8_t *put_dht(uint8_t *p, int index, const Table *t) {
    int len = 2 + 1 + 16 + t->nvals;
    *p++ = 0xFF; *p++ = 0xC4; *p++ = (uint8_t)(len >> 8); *p++ = (uint8_t)len;
    *p++ = (uint8_t)index;
    memcpy(p, t->bits + 1, 16);
    memcpy(p + 16, t->vals, (size_t)t->nvals);
    return p + 16 + t->nvals;
}

static uint8_t *put_headers(uint8_t *p, const Geometry *g, const uint16_t tables[][64], const int *table_of,
                            const Table *tdc, const Table *tac) {
    static const uint8_t jfif[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
    memcpy(p, jfif, sizeof jfif);
    p += sizeof jfif;
    int n = g->n, n_tables = 0;
    for (int c = 0; c < n; c++) n_tables = table_of[c] + 1 > n_tables ? table_of[c] + 1 : n_tables;
    for (int s = 0; s < n_tables; s++) {           /* DQT, 8-bit, in slot order (= order of first use) */
        *p++ = 0xFF; *p++ = 0xDB; *p++ = 0; *p++ = 67; *p++ = (uint8_t)s;
        for (int k = 0; k < 64; k++) *p++ = (uint8_t)tables[s][k];
    }
    *p++ = 0xFF; *p++ = 0xC0; *p++ = 0; *p++ = (uint8_t)(8 + 3 * n); *p++ = 8;   /* SOF0 */
    *p++ = (uint8_t)(g->height >> 8); *p++ = (uint8_t)g->height;
    *p++ = (uint8_t)(g->width >> 8); *p++ = (uint8_t)g->width;
    *p++ = (uint8_t)n;
    for (int c = 0; c < n; c++) {
        *p++ = (uint8_t)c;
        *p++ = (uint8_t)(g->c[c].h << 4 | g->c[c].v);
        *p++ = (uint8_t)table_of[c];
    }
    for (int t = 0; t < (n > 1 ? 2 : 1); t++) {     /* DHT: DC 0, AC 0, DC 1, AC 1 */
        p = put_dht(p, t, &tdc[t]);
        p = put_dht(p, 0x10 | t, &tac[t]);
    }
    *p++ = 0xFF; *p++ = 0xDA; *p++ = 0; *p++ = (uint8_t)(6 + 2 * n); *p++ = (uint8_t)n;   /* SOS */
    for (int c = 0; c < n; c++) {
        *p++ = (uint8_t)c;
        *p++ = c ? 0x11 : 0x00;
    }
    *p++ = 0; *p++ = 63; *p++ = 0;
    return p;
}

const char *write_jpeg(const Geometry *g, const int16_t *planes, const uint16_t tables[][64],
                       const int *table_of, uint8_t **out, size_t *out_len) {
    size_t n_slots = scan_slots(g);
    Slot *slots = malloc(n_slots * sizeof(Slot));
    uint32_t *syms = malloc(n_slots * 67 * sizeof(uint32_t));    /* DC, 63 AC or ZRL, EOB per block */
    /* room: headers, and per block at most 64 codes of 16 + 11 bits, each byte possibly stuffed */
    uint8_t *buf = malloc(2048 + n_slots * 440);
    const char *why = NULL;
    long freq[4][257] = {{0}}, n_syms = 0;
    Table tab[4];
    if (!slots || !syms || !buf) why = "out of memory";
    if (!why) {
        scan_order(g, slots);
        n_syms = gather(g, planes, slots, n_slots, freq, syms);
        if (n_syms < 0) why = "a coefficient baseline JPEG cannot code";
    }
    for (int t = 0; !why && t < 4; t++)
        if ((g->n > 1 || !(t & 1)) && gen_optimal_table(freq[t], &tab[t])) why = "a Huffman code longer than 32 bits";
    if (!why) {
        Put w = {put_headers(buf, g, tables, table_of, tab, tab + 2), 0, 0};
        for (long i = 0; i < n_syms; i++) {
            uint32_t s = syms[i], nb = s >> 11 & 15;
            const Table *t = &tab[s >> 23];
            int sym = s >> 15 & 255;
            put_bits(&w, (uint32_t)t->code[sym] << nb | (s & 0x7FF), t->size[sym] + (int)nb);
        }
        put_bits(&w, 0x7F, 7);                  /* pad the last byte with ones */
        for (; w.n >= 8; w.n -= 8) put_byte(&w, (uint8_t)(w.acc >> (w.n - 8)));
        *w.p++ = 0xFF;
        *w.p++ = 0xD9;
        *out_len = (size_t)(w.p - buf);
        *out = buf;
    } else free(buf);
    free(slots);
    free(syms);
    return why;
}
