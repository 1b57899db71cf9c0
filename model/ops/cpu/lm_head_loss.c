#include "cpu_ops.h"
Status cpu_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht, Tensor wt, Tensor targets, LossConfig cfg, float grad_scale) { return errorf("unwritten"); }
