package smolvm

import (
	"math"
	"slices"
	"time"
)

// BenchStats summarises one measured quantity over the VMs of a run. Times
// are milliseconds; memory figures KiB.
type BenchStats struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	Mean float64 `json:"mean"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
}

// benchSummarise computes the statistics of samples (the zero BenchStats
// for none). Percentiles use the nearest-rank method: the p-th percentile
// is the smallest sample with at least p% of the samples at or below it,
// so it is always a measured value.
func benchSummarise(samples []float64) BenchStats {
	if len(samples) == 0 {
		return BenchStats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return BenchStats{
		N: len(s), P50: benchPercentile(s, 50), P95: benchPercentile(s, 95),
		Mean: sum / float64(len(s)), Min: s[0], Max: s[len(s)-1],
	}
}

// benchPercentile is the nearest-rank p-th percentile of sorted, non-empty
// samples.
func benchPercentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// benchMs converts a duration to fractional milliseconds.
func benchMs(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
