"""GPU check kit (issue #19): see benchmarks/gpu/__main__.py."""
