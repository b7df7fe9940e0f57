"""Developer tooling of the `kiban-dev` distribution: the local control plane (devcluster), the
autoscaling and operator benchmarks, the demo, the chart's generated files (chartgen) and the
drift evaluation on traces. Never installed in the operator image."""
