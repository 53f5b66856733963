/* Shared declarations of the compiled JPEG path (tokenizer.jpeg._scan; Python side: scan.py).
 *
 * Coefficients live in one buffer of "planes": per component, (prows, pcols) blocks of 64
 * zigzag-ordered int16 coefficients, row-major, the components one after another; prows/pcols
 * include the padding blocks of interleaved scans (MCU multiples), only rows x cols of them are image
 * blocks. After all blocks, one uint64 per block: bit k set <=> its coefficient k is nonzero (whoever
 * fills the planes keeps these masks, so nobody scans 64 coefficients to find the few nonzeros). */
#ifndef DCTGPT_SCAN_H
#define DCTGPT_SCAN_H

#include <stddef.h>
#include <stdint.h>

#define MAX_COMP 3

typedef struct {
    int h, v;              /* sampling factors */
    int rows, cols;        /* coded blocks: libjpeg's height_in_blocks, width_in_blocks */
    int prows, pcols;      /* blocks including MCU padding */
    size_t first;          /* index of the component's first block in the planes buffer */
} Plane;

typedef struct {
    int height, width, n;  /* pixels, components (1 or 3) */
    int hmax, vmax, mcu_rows, mcu_cols;
    Plane c[MAX_COMP];
    size_t n_blocks;       /* all blocks of all planes, padding included */
} Geometry;

/* One block of a scan, in scan order: where it is in the planes, its component, and whether it is
 * an MCU padding ("dummy") block. */
typedef struct {
    uint32_t block;
    uint8_t comp, dummy;
} Slot;

/* Fill `g` for an image of this size with per-component factors hv = {h0, v0, h1, v1, ...}.
 * Returns 0, or -1 if the factors are not 1..4. */
int geometry(Geometry *g, int height, int width, int n, const int *hv);

/* The blocks of one scan over all components in coding order (interleaved when n > 1, MCU padding
 * blocks included); `out` has room for scan_slots(g). Returns the count written. */
size_t scan_slots(const Geometry *g);
size_t scan_order(const Geometry *g, Slot *out);

/* bytes of a planes buffer, and its nonzero masks */
static inline size_t planes_size(const Geometry *g) { return g->n_blocks * (64 * sizeof(int16_t) + sizeof(uint64_t)); }
static inline uint64_t *plane_masks(const Geometry *g, const int16_t *planes) {
    return (uint64_t *)(planes + 64 * g->n_blocks);
}

/* JPEG file -> planes. `alloc(ctx, bytes)` returns zeroed room for the planes (NULL: out of
 * memory). Returns NULL on success, else why the file is not taken (the caller falls back to the
 * reference path). qt[c] receives component c's quantization table as the file defines it last. */
typedef int16_t *(*PlaneAlloc)(void *ctx, size_t bytes);
const char *read_jpeg(const uint8_t *data, size_t len, Geometry *g, int hv[2 * MAX_COMP],
                      uint16_t qt[MAX_COMP][64], PlaneAlloc alloc, void *ctx);

/* planes -> a baseline JPEG file, byte for byte what libjpeg (jpeglib's write_jpeg_dct with
 * optimize_coding) writes. table_of[c] is component c's quantization table slot, tables[slot] the
 * zigzag table. Returns NULL and sets *out (malloc'd) and *out_len, or a reason. */
const char *write_jpeg(const Geometry *g, const int16_t *planes, const uint16_t tables[][64],
                       const int *table_of, uint8_t **out, size_t *out_len);

/* Token ids of the vocabulary (tokenizer.jpeg.format.Vocab). */
typedef struct {
    int dc_range, ac_range, max_skip;
    int byte, dc, ac, ac_stride, zrl, eob, skip, eos, size;
} VocabIds;

/* A stream's block order: per block (comp, brow, bcol, row, col), from format.BlockLayout. */
typedef struct {
    const int32_t *rows;   /* (n, 5) */
    size_t n;
    int n_bands;
    int bands[65];         /* band edges; raster: {1, 64} */
    int raster;
} Order;

/* planes -> body tokens between the given header and EOS. ids (cap) and pos (cap, 5) are the room;
 * returns the token count. token_bound gives a cap that always suffices. */
size_t token_bound(const Geometry *g, const int16_t *planes, const Order *o, size_t header_len);
size_t emit_tokens(const Geometry *g, const int16_t *planes, const Order *o, const VocabIds *v,
                   const int32_t *header, const int32_t *header_pos, size_t header_len,
                   int32_t *ids, int32_t *pos);

/* body ids (header excluded, EOS included) -> planes (zeroed by the caller). NULL on success, else
 * why the stream is not taken (the reference decoder then gives the error). */
const char *parse_tokens(const Geometry *g, const int32_t *ids, size_t n, const Order *o,
                         const VocabIds *v, int16_t *planes);

/* A JpegGrammar cursor in the body, flattened (tokenizer/jpeg/accepts.py fills it). */
typedef struct {
    int u, k, after_zrl, no_skip, done;   /* unit, next zigzag index, ... as in grammar.py */
    int n_pending, pending_lo[2], pending_hi[2];   /* escape bytes to come: their value limits */
    int esc_active, esc_comp, esc_sign;   /* a DC escape under way */
    long esc_payload;
    long dc[MAX_COMP];                    /* DC value per component */
} GState;

typedef struct {
    const int32_t *units;                 /* (n_units, 3): start, end, component */
    int n_units, n_blocks, raster, max_skip, ac_max;
    long dc_lo[MAX_COMP], dc_hi[MAX_COMP]; /* DC bounds per component */
    VocabIds v;
} GCtx;

#define MAX_PIECE 64                      /* longest sequence accepts() takes */

/* mask[p] = 1 if the cursor in state `start` takes all ids of sequence p, ids[offsets[p]:offsets[p+1]];
 * order: the sequences sorted, lcp[i]: common prefix length of sequences order[i] and order[i-1]. */
void accepts_sorted(const GCtx *C, const GState *start, const int32_t *ids, const int32_t *offsets,
                    const int32_t *order, const int32_t *lcp, size_t n, char *mask);

#endif
