"""Evaluation: perplexity over prepared splits (the one definition), benchmarks to come."""
