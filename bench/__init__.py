"""The benchmark suite of issue 7 ("Performance"): `make bench` or `python -m bench.run`.
Results of past runs are in bench/RESULTS.md; generated data and run directories go to bench/out/."""
