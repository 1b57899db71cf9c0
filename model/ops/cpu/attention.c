#include "cpu_ops.h"
Status cpu_attention_forward(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) { return errorf("unwritten"); }
Status cpu_attention_backward(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv, Tensor dout, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) { return errorf("unwritten"); }
