/* CUB's stable radix sort of (key, value) pairs, emulated by std::stable_sort. */
#pragma once
#include <algorithm>
#include <vector>
namespace cub {
struct DeviceRadixSort {
    static cudaError_t SortPairs(void *tmp, size_t &bytes, const int32_t *kin, int32_t *kout, const int32_t *vin,
                                 int32_t *vout, int n, int, int, cudaStream_t) {
        if (!tmp) { bytes = 16; return cudaSuccess; }
        std::vector<std::pair<int32_t, int32_t>> v(n);
        for (int i = 0; i < n; i++) v[i] = {kin[i], vin[i]};
        std::stable_sort(v.begin(), v.end(), [](auto a, auto b) { return a.first < b.first; });
        for (int i = 0; i < n; i++) { kout[i] = v[i].first; vout[i] = v[i].second; }
        return cudaSuccess;
    }
};
}
