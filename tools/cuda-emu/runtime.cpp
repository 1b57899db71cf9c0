/* Fiber-per-thread emulation of CUDA blocks: threads of a block run one at a time between
 * barriers, in an order chosen by EMU_ORDER (0 forward, 1 reverse, 2 shuffled) to expose races. */
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <nccl.h>
#include <time.h>
#include <ucontext.h>
#include <stdio.h>
#include <stdlib.h>
#include <vector>
#include <algorithm>
#include <random>
dim3 threadIdx, blockIdx, blockDim, gridDim;
float *emu_dynamic_smem;
static dim3 cfg_grid, cfg_block;
static size_t cfg_smem;
static std::vector<ucontext_t> ctx;
static std::vector<char *> stacks;
static std::vector<int> done;
static ucontext_t sched;
static int cur;
static std::function<void()> *body_ptr;
static const size_t STACK = 256 << 10;
const char *cudaGetErrorString(cudaError_t) { return "emu error"; }
const char *cublasGetStatusString(cublasStatus_t) { return "emu error"; }
const char *ncclGetErrorString(ncclResult_t) { return "emu error"; }
/* cudaMalloc's 256-byte alignment, so the emulated WMMA's alignment checks mean what they do on
 * the hardware. */
cudaError_t cudaMalloc(void **p, size_t n) {
    *p = aligned_alloc(256, (n + 255) / 256 * 256 + 256);
    memset(*p, 0xff, n);
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) { memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { memset(d, v, n); return cudaSuccess; }
cudaError_t cudaMemcpy2DAsync(void *d, size_t dpitch, const void *s, size_t spitch, size_t w, size_t h, cudaMemcpyKind,
                              cudaStream_t) {
    for (size_t r = 0; r < h; r++) memmove((char *)d + r * dpitch, (const char *)s + r * spitch, w);
    return cudaSuccess;
}
cudaError_t cudaMemset2DAsync(void *d, size_t pitch, int v, size_t w, size_t h, cudaStream_t) {
    for (size_t r = 0; r < h; r++) memset((char *)d + r * pitch, v, w);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
/* Kernels run when launched, so an event's time is the host's clock when it is recorded. */
struct EmuEvent { double seconds; };
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = (cudaEvent_t)calloc(1, sizeof(EmuEvent)); return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { free(e); return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    e->seconds = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)(1e3 * (b->seconds - a->seconds));
    return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
static float shfl_slots[1024];
float emu_shfl_xor(float v, int o) {
    int t = threadIdx.x;
    shfl_slots[t] = v;
    emu_sync();
    float r = shfl_slots[t ^ o];
    emu_sync();
    return r;
}
unsigned long long atomicMin(unsigned long long *p, unsigned long long v) { unsigned long long o = *p; if (v < o) *p = v; return o; }
void emu_configure(dim3 g, dim3 b, size_t smem) {
    cfg_grid = g; cfg_block = b; cfg_smem = smem;
    if (b.x * b.y * b.z > 1024 || b.y != 1 || b.z != 1) { fprintf(stderr, "emu: bad block\n"); abort(); }
    if (g.y > 65535 || g.z > 65535) { fprintf(stderr, "emu: grid y/z too large\n"); abort(); }
    if (smem > 232448) { fprintf(stderr, "emu: dynamic smem %zu too large\n", smem); abort(); }
}
static void fiber_main() { (*body_ptr)(); done[cur] = 1; swapcontext(&ctx[cur], &sched); }
void emu_sync() { swapcontext(&ctx[cur], &sched); }
static int order_mode() { const char *e = getenv("EMU_ORDER"); return e ? atoi(e) : 0; }
void emu_run(std::function<void()> body) {
    body_ptr = &body;
    int nt = cfg_block.x;
    ctx.resize(nt); done.assign(nt, 0);
    while ((int)stacks.size() < nt) stacks.push_back((char *)malloc(STACK));
    /* dynamic shared memory starts 128-byte aligned, as the kernels declare it */
    std::vector<float> smem_space(cfg_smem / 4 + 1 + 32, NAN);
    float *smem_base = (float *)(((uintptr_t)smem_space.data() + 127) / 128 * 128);
    std::mt19937 rng(12345);
    blockDim = cfg_block; gridDim = cfg_grid;
    for (unsigned by = 0; by < cfg_grid.y; by++)
        for (unsigned bx = 0; bx < cfg_grid.x; bx++) {
            std::fill(smem_space.begin(), smem_space.end(), NAN);
            emu_dynamic_smem = smem_base;
            for (int t = 0; t < nt; t++) {
                done[t] = 0;
                getcontext(&ctx[t]);
                ctx[t].uc_stack.ss_sp = stacks[t];
                ctx[t].uc_stack.ss_size = STACK;
                ctx[t].uc_link = NULL;
                makecontext(&ctx[t], fiber_main, 0);
            }
            std::vector<int> order(nt);
            for (int t = 0; t < nt; t++) order[t] = t;
            int mode = order_mode();
            if (mode == 1) std::reverse(order.begin(), order.end());
            for (;;) {
                if (mode == 2) std::shuffle(order.begin(), order.end(), rng);
                int alive = 0;
                for (int t : order) {
                    if (done[t]) continue;
                    cur = t;
                    threadIdx = dim3(t, 0, 0);
                    blockIdx = dim3(bx, by, 0);
                    swapcontext(&sched, &ctx[t]);
                    alive += !done[t];
                }
                if (!alive) break;
            }
        }
}
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    if (lda < 1 || ldb < 1 || ldc < std::max(1, m) || k < 1) { fprintf(stderr, "emu sgemm: bad dims\n"); return 7; }
    if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n)) { fprintf(stderr, "emu sgemm: bad ld\n"); return 7; }
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                float a = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                float b = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                s += (double)a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            *c = (float)(*alpha * s + (*beta == 0.0f ? 0.0 : *beta * (double)*c));
        }
    return CUBLAS_STATUS_SUCCESS;
}
