/* The NCCL result type the error macros name, for the CPU emulation. */
#pragma once
typedef int ncclResult_t;
enum { ncclSuccess = 0 };
const char *ncclGetErrorString(ncclResult_t);
