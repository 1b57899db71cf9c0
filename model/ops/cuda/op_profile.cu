/* GPU time per op: while profiling is on, the backend's table holds wrappers that bracket each op
 * with CUDA events on its stream; the elapsed times are summed per op name when read. */
#include <stdlib.h>

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "cuda_state.h"

/* Every op of the table, in one list for the wrappers, their ids and their names. */
#define CUDA_PROFILED_OPS(X)                                                                          \
    X(embedding_forward) X(embedding_backward) X(rmsnorm_forward) X(rmsnorm_backward) X(rmsnorm_residual_backward) \
    X(linear_forward) \
    X(linear_backward) X(linear_residual_forward) X(rope_forward) X(rope_backward) X(attention_forward)  \
    X(attention_backward) X(swiglu_forward) X(swiglu_backward) X(lm_head_loss) X(lm_head_loss_topk) X(adamw_step)             \
    X(adamw_step_multi) X(sum_squares) X(sum_squares_multi) X(scale) X(accumulate) X(cast)

enum {
#define OP_ID(name) OP_##name,
    CUDA_PROFILED_OPS(OP_ID)
#undef OP_ID
    OP_COUNT
};

static const char *const OP_NAMES[OP_COUNT] = {
#define OP_NAME(name) #name,
    CUDA_PROFILED_OPS(OP_NAME)
#undef OP_NAME
};

/* Event pairs recorded but not yet read: read (with a wait) when the pool is full or on request. */
enum { PROFILE_PAIRS = 1024 };

struct CudaOpProfile {
    cudaEvent_t start[PROFILE_PAIRS], end[PROFILE_PAIRS];
    int op[PROFILE_PAIRS];
    int pending;
    double ms[OP_COUNT];
    int64_t calls[OP_COUNT];
};

static Status profile_fold(CudaState *st) {
    CudaOpProfile *p = st->op_profile;
    if (!p || p->pending == 0) return STATUS_OK;
    CUDA_TRY(cudaEventSynchronize(p->end[p->pending - 1]));
    for (int i = 0; i < p->pending; i++) {
        float ms = 0;
        CUDA_TRY(cudaEventElapsedTime(&ms, p->start[i], p->end[i]));
        p->ms[p->op[i]] += ms;
        p->calls[p->op[i]]++;
    }
    p->pending = 0;
    return STATUS_OK;
}

template <typename F, F fn, int id> struct ProfiledOp;

template <typename... A, Status (*fn)(Backend *, A...), int id>
struct ProfiledOp<Status (*)(Backend *, A...), fn, id> {
    static Status call(Backend *be, A... args) {
        CudaState *st = cuda_state(be);
        CudaOpProfile *p = st->op_profile;
        if (p->pending == PROFILE_PAIRS) TRY(profile_fold(st));
        int i = p->pending;
        CUDA_TRY(cudaEventRecord(p->start[i], st->stream));
        Status s = fn(be, args...);
        CUDA_TRY(cudaEventRecord(p->end[i], st->stream));
        p->op[i] = id;
        p->pending++;
        return s;
    }
};

static Ops profiled_ops_table(void) {
    Ops o = cuda_ops_table();
#define WRAP(name) o.name = ProfiledOp<decltype(&cuda_##name), &cuda_##name, OP_##name>::call;
    CUDA_PROFILED_OPS(WRAP)
#undef WRAP
    return o;
}

void cuda_op_profile_free(CudaState *st) {
    CudaOpProfile *p = st->op_profile;
    if (!p) return;
    for (int i = 0; i < PROFILE_PAIRS; i++) {
        if (p->start[i]) cudaEventDestroy(p->start[i]);
        if (p->end[i]) cudaEventDestroy(p->end[i]);
    }
    free(p);
    st->op_profile = NULL;
}

extern "C" Status cuda_backend_profile_ops(Backend *be, int on) {
    CudaState *st = cuda_state(be);
    if (!on) {
        Status s = profile_fold(st);
        be->ops = cuda_ops_table();
        cuda_op_profile_free(st);
        return s;
    }
    if (st->op_profile) return errorf("cuda backend: op profiling is already on");
    CudaOpProfile *p = (CudaOpProfile *)calloc(1, sizeof *p);
    if (!p) return errorf("cuda backend: out of host memory for the op profile");
    st->op_profile = p;
    for (int i = 0; i < PROFILE_PAIRS; i++) {
        cudaError_t e = cudaEventCreate(&p->start[i]);
        if (e == cudaSuccess) e = cudaEventCreate(&p->end[i]);
        if (e != cudaSuccess) {
            cuda_op_profile_free(st);
            return errorf("cuda backend: creating the op profile's events failed: %s", cudaGetErrorString(e));
        }
    }
    be->ops = profiled_ops_table();
    return STATUS_OK;
}

extern "C" Status cuda_backend_op_times(Backend *be, CudaOpTime *out, int cap, int *n) {
    CudaState *st = cuda_state(be);
    *n = 0;
    if (!st->op_profile) return errorf("cuda backend: op profiling is off");
    if (cap < 1) return errorf("cuda backend: op times: room for %d ops", cap);
    TRY(profile_fold(st));
    const CudaOpProfile *p = st->op_profile;
    for (int i = 0; i < OP_COUNT; i++) {
        if (p->calls[i] == 0) continue;
        /* insertion by time, largest first; with the list full, only over a smaller last entry */
        int at;
        if (*n < cap) at = (*n)++;
        else if (out[cap - 1].ms < p->ms[i]) at = cap - 1;
        else continue;
        while (at > 0 && out[at - 1].ms < p->ms[i]) {
            out[at] = out[at - 1];
            at--;
        }
        out[at] = (CudaOpTime){OP_NAMES[i], p->ms[i], p->calls[i]};
    }
    return STATUS_OK;
}
