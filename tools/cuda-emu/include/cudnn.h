/* The cuDNN handle types the backend state names, for the CPU emulation. */
#pragma once
typedef void *cudnnHandle_t;
typedef int cudnnStatus_t;
enum { CUDNN_STATUS_SUCCESS = 0 };
const char *cudnnGetErrorString(cudnnStatus_t);
