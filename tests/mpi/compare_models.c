/* Compares two saved models (HF folders) parameter by parameter: exits 0 when every parameter's
 * relative difference ||a - b|| / ||b|| is within the given tolerance (0 = bitwise equal). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "model/hf/hf_model.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: compare_models DIR_A DIR_B TOLERANCE\n");
        return 2;
    }
    double tol = atof(argv[3]), worst = 0;
    Backend *be = NULL;
    BackendOptions bo = {1, 0};
    Model *a = NULL, *b = NULL;
    if (backend_create(&be, "cpu", bo) != STATUS_OK || hf_model_load(&a, be, argv[1], 1) != STATUS_OK ||
        hf_model_load(&b, be, argv[2], 1) != STATUS_OK) {
        fprintf(stderr, "compare_models: %s\n", error_message());
        return 1;
    }
    int bad = a->n_params != b->n_params;
    const char *worst_name = "";
    for (int i = 0; !bad && i < a->n_params; i++) {
        Tensor *x = a->params[i].value, *y = b->params[i].value;
        int64_t n = tensor_numel(*x);
        if (n != tensor_numel(*y) || strcmp(a->params[i].name, b->params[i].name) != 0) {
            bad = 1;
            break;
        }
        double num = 0, den = 0;
        for (int64_t j = 0; j < n; j++) {
            double d = (double)tensor_f32(*x)[j] - tensor_f32(*y)[j];
            num += d * d;
            den += (double)tensor_f32(*y)[j] * tensor_f32(*y)[j];
        }
        double rel = sqrt(num) / fmax(sqrt(den), 1e-30);
        if (tol == 0 && num != 0) rel = INFINITY;
        if (rel > worst || isnan(rel)) worst = rel, worst_name = a->params[i].name;
    }
    printf("compare_models: worst relative difference %.3g (%s)\n", worst, worst_name);
    model_destroy(a);
    model_destroy(b);
    backend_destroy(be);
    return bad || !(worst <= tol) ? 1 : 0;
}
