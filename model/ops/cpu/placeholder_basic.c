#include "cpu_ops.h"
Status cpu_embedding_forward(Backend *be, Tensor out, Tensor ids, Tensor table) { return errorf("unwritten"); }
Status cpu_embedding_backward(Backend *be, Tensor dtable, Tensor dout, Tensor ids) { return errorf("unwritten"); }
Status cpu_rmsnorm_forward(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor w, float eps) { return errorf("unwritten"); }
Status cpu_rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd) { return errorf("unwritten"); }
Status cpu_linear_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b) { return errorf("unwritten"); }
Status cpu_linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) { return errorf("unwritten"); }
Status cpu_rope_forward(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos) { return errorf("unwritten"); }
Status cpu_rope_backward(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos) { return errorf("unwritten"); }
Status cpu_swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up) { return errorf("unwritten"); }
Status cpu_swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) { return errorf("unwritten"); }
