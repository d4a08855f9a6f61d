module fraudstream/benchmarks/floor

go 1.21
