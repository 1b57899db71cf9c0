/* Wall-clock seconds on the monotonic clock, for rates and elapsed times in logs and benchmarks
 * (never in anything a result depends on). */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

double monotonic_seconds(void);

#ifdef __cplusplus
}
#endif
