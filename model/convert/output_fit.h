/* A converted layer's output projection refitted to the student's own attention: the least-squares
 * o_proj that maps what the student's heads produce onto what the teacher's attention outputs. */
#pragma once
#include <stdint.h>
#include "core/status.h"

/* Z [N, F]: the student's attention (every head's weighted values, before o_proj) on calibration
 * tokens; Y [N, D]: the teacher's attention output on the same tokens. W [D, F] holds the converted
 * o_proj on entry and, on return, the W minimising mean ||Y_n - W Z_n||^2 + lambda ||W - W_in||_F^2,
 * with lambda = ridge x the mean of Z's squared entries, so the fit leans on the converted weights
 * along directions the calibration barely excites. */
Status output_projection_fit(const float *Z, const float *Y, int64_t N, int64_t F, int64_t D, double ridge, float *W);
