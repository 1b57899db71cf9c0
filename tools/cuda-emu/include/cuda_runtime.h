/* CPU emulation of the parts of the CUDA runtime the ops use (validation only). */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <functional>
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
extern float *emu_dynamic_smem;
void emu_sync();
float emu_shfl_xor(float v, int o);
#define __syncthreads() emu_sync()
#define __syncwarp(...) emu_sync()
#define __shfl_xor_sync(mask, v, o) emu_shfl_xor((v), (o))
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n)
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
typedef int cudaError_t;
enum { cudaSuccess = 0 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
typedef void *cudaStream_t;
struct cudaDeviceProp { size_t sharedMemPerBlockOptin; int major; };
const char *cudaGetErrorString(cudaError_t);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t);
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t);
cudaError_t cudaMemset2DAsync(void *d, size_t pitch, int v, size_t w, size_t h, cudaStream_t);
cudaError_t cudaMemcpy2DAsync(void *d, size_t dpitch, const void *s, size_t spitch, size_t w, size_t h, cudaMemcpyKind,
                              cudaStream_t);
cudaError_t cudaStreamSynchronize(cudaStream_t);
typedef struct EmuEvent *cudaEvent_t;
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaGetLastError();
template <typename F> cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
unsigned long long atomicMin(unsigned long long *p, unsigned long long v);
void emu_configure(dim3 g, dim3 b, size_t smem);
void emu_run(std::function<void()> body);
#define EMU_RUN(...) [&](auto... a) { emu_run([=] { __VA_ARGS__(a...); }); }
inline void emu_configure(dim3 g, dim3 b) { emu_configure(g, b, 0); }
inline void emu_configure(dim3 g, dim3 b, size_t smem, cudaStream_t) { emu_configure(g, b, smem); }
