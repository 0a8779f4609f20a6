"""The light netns lab used by end-to-end tests and benchmarks (see netns.py)."""
