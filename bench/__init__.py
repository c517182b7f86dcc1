"""Benchmark harness for `python -m core bench`, kept outside the `core` library: it patches os.environ and uses
unittest.mock to time torchvision's loader, which no library code should do."""
